"""The benchmark's pure report code: ratios, percentile, table, file name (no timing assertions)."""

from __future__ import annotations

from benchmarks.report import markdown_table, percentile, ratios, results_name

ROW = {
    "size": 1000,
    "engine": {"seconds": 2.5, "writes_per_s": 400.0, "peak_rss_mb": 70.0},
    "kubectl_replace": {"seconds": 10.0, "writes_per_s": 100.0, "peak_rss_mb": 130.0},
    "ceiling": {"seconds": 2.0, "writes_per_s": 500.0, "peak_rss_mb": 80.0},
    "data_bytes_received": 0,
    "other_clients_p99_ms": {"uncapped": 40.0, "capped": 20.0},
}


def test_ratios() -> None:
    assert ratios(ROW) == {"engine_vs_kubectl": 4.0, "engine_vs_ceiling_pct": 80.0}


def test_ratios_without_a_contender() -> None:
    assert ratios({"size": 1, "engine": {"writes_per_s": 10}}) == {"engine_vs_kubectl": None,
                                                                     "engine_vs_ceiling_pct": None}


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 99) is None


def test_markdown_table() -> None:
    lines = markdown_table([ROW]).splitlines()
    assert len(lines) == 3
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert "| 1000 |" in lines[2] and "4.00x" in lines[2] and "80.0 %" in lines[2] and "40.0 / 20.0" in lines[2]


def test_results_name() -> None:
    assert results_name("2026-11-29", [1000, 10000]) == "2026-11-29-1000-10000.json"
