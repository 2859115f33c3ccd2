"""Pure report code for the rewrite benchmark: ratios and the README table (no I/O, no timing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _rate(section: Mapping[str, Any] | None) -> float:
    return float((section or {}).get("writes_per_s") or 0.0)


def ratios(row: Mapping[str, Any]) -> dict[str, float | None]:
    """Engine throughput vs kubectl replace (x times) and vs the ceiling (percent)."""
    engine, kubectl, ceiling = _rate(row.get("engine")), _rate(row.get("kubectl_replace")), _rate(row.get("ceiling"))
    return {
        "engine_vs_kubectl": round(engine / kubectl, 2) if kubectl else None,
        "engine_vs_ceiling_pct": round(100.0 * engine / ceiling, 1) if ceiling else None,
    }


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per size: throughput and RSS of each contender, the ratios, p99 of other clients."""
    head = ("| Secrets | engine s | engine w/s | engine RSS MB | kubectl s | kubectl w/s | kubectl RSS MB "
            "| ceiling w/s | ceiling RSS MB | engine/kubectl | engine/ceiling | other p99 ms uncapped / capped "
            "| data bytes |")
    sep = "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"
    lines = [head, sep]
    for row in rows:
        e, k, c = row.get("engine") or {}, row.get("kubectl_replace") or {}, row.get("ceiling") or {}
        r = ratios(row)
        p99 = row.get("other_clients_p99_ms") or {}
        lines.append(
            f"| {row['size']} | {_fmt(e.get('seconds'))} | {_fmt(e.get('writes_per_s'), '.0f')} "
            f"| {_fmt(e.get('peak_rss_mb'))} | {_fmt(k.get('seconds'))} | {_fmt(k.get('writes_per_s'), '.0f')} "
            f"| {_fmt(k.get('peak_rss_mb'))} | {_fmt(c.get('writes_per_s'), '.0f')} | {_fmt(c.get('peak_rss_mb'))} "
            f"| {_fmt(r['engine_vs_kubectl'], '.2f')}x | {_fmt(r['engine_vs_ceiling_pct'])} % "
            f"| {_fmt(p99.get('uncapped'))} / {_fmt(p99.get('capped'))} | {_fmt(row.get('data_bytes_received'), 'd')} |"
        )
    return "\n".join(lines)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


def results_name(date: str, sizes: Sequence[int]) -> str:
    """``<date>-<sizes>.json``, e.g. ``2026-11-29-1000-10000.json``."""
    return f"{date}-{'-'.join(str(s) for s in sizes)}.json"
