"""The benchmark's pure report code: ratios, percentile, table, file name (no timing assertions)."""

from __future__ import annotations

from benchmarks.report import higher_ceiling, markdown_table, percentile, ratios, results_name

ROW = {
    "size": 1000,
    "engine": {"seconds": 2.5, "writes_per_s": 400.0, "peak_rss_mb": 70.0},
    "kubectl_replace": {"seconds": 10.0, "writes_per_s": 100.0, "peak_rss_mb": 130.0},
    "ceiling": {"seconds": 2.0, "writes_per_s": 500.0, "peak_rss_mb": 80.0},
    "data_bytes_received": 0,
    "other_clients_ms": {"idle": {"p50": 2.0, "p99": 10.0}, "engine": {"p50": 5.0, "p99": 40.0},
                         "engine_apf": {"p50": 3.0, "p99": 20.0}},
    "engine_apf": {"writes_per_s": 300.0, "throttled": 4, "cpu": {"client_per_1k": 1.5, "server_per_1k": 4.25}},
}


def test_ratios() -> None:
    assert ratios(ROW) == {"engine_vs_kubectl": 4.0, "engine_vs_ceiling_pct": 80.0, "ceiling_used": "ceiling"}


def test_ratios_use_the_higher_ceiling() -> None:
    row = {**ROW, "ceiling_go": {"writes_per_s": 800.0}}
    assert higher_ceiling(row) == ("ceiling_go", 800.0)
    assert ratios(row)["engine_vs_ceiling_pct"] == 50.0 and ratios(row)["ceiling_used"] == "ceiling_go"


def test_ratios_without_a_contender() -> None:
    assert ratios({"size": 1, "engine": {"writes_per_s": 10}}) == {"engine_vs_kubectl": None,
                                                                     "engine_vs_ceiling_pct": None,
                                                                     "ceiling_used": None}


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 99) is None


def test_markdown_table() -> None:
    lines = markdown_table([{**ROW, "namespaces": 10}]).splitlines()
    assert len(lines) == 7 and lines[3] == ""
    assert lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    assert lines[4].count("|") == lines[5].count("|") == lines[6].count("|")
    assert "| 1000 in 10 ns |" in lines[2] and "4.00x" in lines[2] and "80.0 % (Python)" in lines[2]
    assert "| 2.0 / 10.0 | 5.0 / 40.0 | 3.0 / 20.0 | 300 | 4 |" in lines[6]
    assert "| 1.50 / 4.25 |" in lines[6] and "n/a / n/a" in lines[6]  # no CPU figures for the others


def test_results_name() -> None:
    assert results_name("2026-11-29", [1000, 10000]) == "2026-11-29-1000-10000.json"
    assert results_name("2026-12-01", ["3000", "20000@5000"]) == "2026-12-01-3000-20000at5000.json"
    taken = {"2026-12-01-3000.json", "2026-12-01-3000-2.json"}
    assert results_name("2026-12-01", ["3000"], taken) == "2026-12-01-3000-3.json"


def test_apf_seats_are_sized_to_the_cores() -> None:
    from benchmarks.rewrite import seats_for_cores

    assert seats_for_cores(2) == ["--max-requests-inflight=20", "--max-mutating-requests-inflight=10"]
    assert seats_for_cores(8) == ["--max-requests-inflight=80", "--max-mutating-requests-inflight=40"]
