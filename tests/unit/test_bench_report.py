"""The benchmark's pure report code: ratios, percentile, table, file name (no timing assertions)."""

from __future__ import annotations

import json

from benchmarks.report import (
    gc_marks,
    higher_ceiling,
    markdown_table,
    percentile,
    ratios,
    results_name,
    slow_requests_in_gc,
)

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


# Two lines as kube-apiserver (Go 1.2x) prints them with GODEBUG=gctrace=1, and one it does not.
GCTRACE = [
    "gc 41 @127.610s 3%: 0.11+806+0.006 ms clock, 0.22+0.073/409/344+0.013 ms cpu, 785->842->452 MB, "
    "894 MB goal, 3 MB stacks, 0 MB globals, 2 P",
    "I1202 02:13:06.928741     369 flags.go:64] FLAG: --v=\"1\"",
    "gc 42 @131.438s 3%: 0.077+760+0.004 ms clock, 0.15+0.70/389/364+0.009 ms cpu, 796->868->472 MB, "
    "907 MB goal, 3 MB stacks, 0 MB globals, 2 P",
]


def test_gc_marks_are_placed_in_wall_time_from_the_process_start() -> None:
    marks = gc_marks(GCTRACE, process_start=1000.0)
    assert marks == [(1127.61, 1127.61 + 0.806, 452), (1131.438, 1131.438 + 0.76, 472)]


def test_slow_requests_in_gc_counts_the_tail_inside_and_outside_marks() -> None:
    marks = [(10.0, 10.9, 450)]
    # Ten requests, one every 0.25 s from 9.0 to 11.25: four start inside the mark (10.0-10.9), and
    # the one at 9.75 is still being served when it begins (300 ms), so five are inside.
    latencies = [2.0, 2.0, 2.0, 300.0, 20.0, 2.0, 30.0, 2.0, 2.0, 25.0]
    trace = [(9.0 + 0.25 * i, ms) for i, ms in enumerate(latencies)]
    out = slow_requests_in_gc(trace, marks, slow_ms=10.0)
    assert out["gc_cycles"] == 1 and out["live_heap_mb_max"] == 450
    assert out["requests_in_marks_share"] == 0.5
    assert out["slow_requests"] == 4 and out["slow_in_marks_share"] == 0.75  # 300, 20, 30 inside; 25 not
    assert out["p99_in_marks_ms"] == 300.0 and out["p99_outside_marks_ms"] == 25.0
    assert out["marking_share"] == round(0.9 / 2.25, 3)


def test_slow_requests_in_gc_ignores_marks_outside_the_trace() -> None:
    out = slow_requests_in_gc([(5.0, 1.0), (6.0, 50.0)], [(1.0, 2.0, 100), (7.0, 8.0, 100)], slow_ms=10.0)
    assert out["gc_cycles"] == 0 and out["slow_in_marks_share"] == 0.0 and out["marking_share"] == 0.0
    assert slow_requests_in_gc([], [(1.0, 2.0, 100)], slow_ms=1.0) == {"requests": 0}


def test_apiserver_env_words_are_name_value_pairs() -> None:
    import pytest

    from benchmarks.rewrite import parse_env

    assert parse_env("GOGC=400  GOMEMLIMIT=1GiB") == {"GOGC": "400", "GOMEMLIMIT": "1GiB"}
    assert parse_env("") == {}
    with pytest.raises(SystemExit, match="'GOGC' is not NAME=VALUE"):
        parse_env("GOGC")


def test_patch_kinds_carry_no_data_and_keep_the_preconditions() -> None:
    import pytest

    from benchmarks.patch_cost import KINDS, patch_for

    for kind in KINDS:
        body, content_type = patch_for(kind, "u-1", "42")
        assert '"data"' not in json.dumps(body) and content_type.startswith("application/")
        if kind != "empty":
            assert "u-1" in json.dumps(body) and "42" in json.dumps(body)
    with pytest.raises(SystemExit, match="unknown patch kind 'apply'"):
        patch_for("apply", "u", "1")
