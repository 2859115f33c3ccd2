"""Pure report code for the rewrite benchmark: ratios and the README tables (no I/O, no timing)."""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Any

CEILINGS = ("ceiling", "ceiling_go")  # Python (aiohttp) and Go (net/http, HTTP/2) pre-listed load generators


def _rate(section: Mapping[str, Any] | None) -> float:
    return float((section or {}).get("writes_per_s") or 0.0)


def higher_ceiling(row: Mapping[str, Any]) -> tuple[str | None, float]:
    """The ceiling contender with the higher rate, and that rate (None, 0.0 if neither ran)."""
    best: tuple[str | None, float] = (None, 0.0)
    for name in CEILINGS:
        rate = _rate(row.get(name))
        if rate > best[1]:
            best = (name, rate)
    return best


def ratios(row: Mapping[str, Any]) -> dict[str, Any]:
    """Engine throughput vs kubectl replace (x times) and vs the higher of the two ceilings (percent)."""
    engine, kubectl = _rate(row.get("engine")), _rate(row.get("kubectl_replace"))
    name, ceiling = higher_ceiling(row)
    return {
        "engine_vs_kubectl": round(engine / kubectl, 2) if kubectl else None,
        "engine_vs_ceiling_pct": round(100.0 * engine / ceiling, 1) if ceiling else None,
        "ceiling_used": name,
    }


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _layout(row: Mapping[str, Any]) -> str:
    return f"{row['size']} in {row['namespaces']} ns" if row.get("namespaces") else str(row["size"])


def _table(head: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Two tables: throughput and memory per contender with the ratios, then CPU per 1,000 writes
    (client, and API server + etcd during that contender's run) and the other client's latency."""
    first = []
    for row in rows:
        e, k = row.get("engine") or {}, row.get("kubectl_replace") or {}
        c, g = row.get("ceiling") or {}, row.get("ceiling_go") or {}
        r = ratios(row)
        used = {"ceiling": "Python", "ceiling_go": "Go"}.get(r["ceiling_used"] or "", "n/a")
        first.append([
            _layout(row), _fmt(e.get("seconds")), _fmt(e.get("writes_per_s"), ".0f"), _fmt(e.get("peak_rss_mb")),
            _fmt(k.get("writes_per_s"), ".0f"), _fmt(k.get("peak_rss_mb")),
            _fmt(c.get("writes_per_s"), ".0f"), _fmt(g.get("writes_per_s"), ".0f"),
            f"{_fmt(r['engine_vs_ceiling_pct'])} % ({used})", f"{_fmt(r['engine_vs_kubectl'], '.2f')}x",
            _fmt(row.get("data_bytes_received"), "d"),
        ])
    second = []
    for row in rows:
        cpu = []
        for name in ("engine", "ceiling", "ceiling_go", "kubectl_replace", "engine_apf"):
            section = (row.get(name) or {}).get("cpu") or {}
            cpu.append(f"{_fmt(section.get('client_per_1k'), '.2f')} / {_fmt(section.get('server_per_1k'), '.2f')}")
        ms = row.get("other_clients_ms") or {}
        lat = [f"{_fmt((ms.get(k) or {}).get('p50'))} / {_fmt((ms.get(k) or {}).get('p99'))}"
               for k in ("idle", "engine", "engine_apf")]
        apf = row.get("engine_apf") or {}
        second.append([_layout(row), *cpu, *lat, _fmt(apf.get("writes_per_s"), ".0f"),
                       _fmt(apf.get("throttled"), "d")])
    lines = _table(["Secrets", "engine s", "engine w/s", "engine RSS MB", "kubectl w/s", "kubectl RSS MB",
                    "ceiling Python w/s", "ceiling Go w/s", "engine / higher ceiling", "engine / kubectl",
                    "data bytes"], first)
    lines += [""]
    lines += _table(["Secrets", "engine CPU s/1k client / server", "Python ceiling", "Go ceiling", "kubectl",
                     "engine under APF", "other client p50 / p99 ms idle", "during engine", "during engine under APF",
                     "engine under APF w/s", "429s"], second)
    return "\n".join(lines)


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (``pct`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


def results_name(date: str, sizes: Sequence[int | str], taken: Container[str] = ()) -> str:
    """``<date>-<sizes>.json``, e.g. ``2026-11-29-1000-10000.json`` (``20000@5000`` -> ``20000at5000``);
    ``-2``, ``-3``, ... before ``.json`` when the name is in ``taken``: a second run of the same sizes on
    one day must not overwrite the first (the README cites result files by name)."""
    stem = f"{date}-{'-'.join(str(s).replace('@', 'at') for s in sizes)}"
    name, n = f"{stem}.json", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.json"
    return name


_GC_LINE = re.compile(r"^gc \d+ @(?P<at>[\d.]+)s \d+%: [\d.]+\+(?P<mark>[\d.]+)\+[\d.]+ ms clock, .*?"
                      r"(?P<start>\d+)->(?P<end>\d+)->(?P<live>\d+) MB")


def gc_marks(lines: Iterable[str], process_start: float) -> list[tuple[float, float, int]]:
    """The concurrent mark phases of a Go process from its ``GODEBUG=gctrace=1`` lines: (start, end) in
    Unix seconds and the live heap (MB) after each. ``gc N @T s P%: a+b+c ms clock, ...`` gives T
    seconds since the process started and b ms of concurrent mark (a and c are the short
    stop-the-world pauses around it); other lines are ignored."""
    marks = []
    for line in lines:
        if m := _GC_LINE.match(line):
            start = process_start + float(m["at"])
            marks.append((start, start + float(m["mark"]) / 1000, int(m["live"])))
    return marks


def slow_requests_in_gc(trace: Sequence[tuple[float, float]], marks: Sequence[tuple[float, float, int]],
                        slow_ms: float) -> dict[str, Any]:
    """How much of the other client's tail falls inside the API server's GC mark phases.

    ``trace``: (start in Unix seconds, latency ms) per request. A request counts as inside a mark when
    it started during one or within its latency before one began (it was still being served). The
    share of slow requests (``> slow_ms``) inside marks, against the share of all requests inside
    them, says whether GC explains the tail; the p99 inside and outside marks says by how much."""
    if not trace:
        return {"requests": 0}
    first, last = trace[0][0], trace[-1][0]
    seen = [m for m in marks if m[1] >= first and m[0] <= last]
    marking = sum(min(end, last) - max(start, first) for start, end, _ in seen)

    def inside(t: float, ms: float) -> bool:
        return any(start - ms / 1000 <= t <= end for start, end, _ in seen)

    flags = [inside(t, ms) for t, ms in trace]
    slow = [f for (_, ms), f in zip(trace, flags, strict=True) if ms > slow_ms]
    in_ms = [ms for (_, ms), f in zip(trace, flags, strict=True) if f]
    out_ms = [ms for (_, ms), f in zip(trace, flags, strict=True) if not f]
    span = last - first
    return {"requests": len(trace), "gc_cycles": len(seen),
            "marking_share": round(marking / span, 3) if span > 0 else None,
            "live_heap_mb_max": max((live for *_, live in seen), default=None),
            "requests_in_marks_share": round(sum(flags) / len(trace), 3),
            "slow_ms": round(slow_ms, 2), "slow_requests": len(slow),
            "slow_in_marks_share": round(sum(slow) / len(slow), 3) if slow else None,
            "p99_in_marks_ms": percentile(in_ms, 99), "p99_outside_marks_ms": percentile(out_ms, 99)}
