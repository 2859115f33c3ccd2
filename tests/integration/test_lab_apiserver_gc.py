"""The benchmark's view of kube-apiserver's garbage collector: ``apiserver_env`` reaches the replica,
its ``gctrace`` lines land in the replica's log, and placed from the process's start time they fall
inside the replica's life (the other client's tail is set against them, benchmarks/README.md)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from aks_kms_lab.controlplane import ControlPlane
from benchmarks.report import gc_marks
from benchmarks.rewrite import ApiserverGc, process_start


def test_gctrace_from_apiserver_env_is_placed_within_the_replicas_life(tmp_path: Path) -> None:
    before = time.time()
    with ControlPlane(tmp_path / "cp", apiserver_env={"GODEBUG": "gctrace=1"}) as cp:
        assert cp.replicas[0] is not None
        pid = cp.replicas[0].pid
        started = process_start(pid)
        assert before - 1 <= started <= time.time()  # /proc start time: 10 ms ticks
        marks = gc_marks(cp.replica_log(0).read_text().splitlines(), started)
        now = time.time()
        assert marks, "kube-apiserver collects while it loads its caches; no gctrace line reached its log"
        assert all(started <= start < end <= now + 1 for start, end, _ in marks)
        assert all(live > 0 for *_, live in marks)
        # A report made after start-up reads the log from where it stood: over a trace spanning the whole
        # life so far, it sees fewer collections than the log holds (it would see them all if it read
        # from the start, and those are in the span by the assertion above).
        gc = ApiserverGc(cp.replica_log(0), pid)
        trace = tmp_path / "trace.tsv"
        trace.write_text(f"{started:.4f}\t1.0\n{time.time():.4f}\t1.0\n")
        assert gc.report(trace, slow_ms=10.0)["gc_cycles"] < len(marks)


def test_process_start_is_placed_to_the_clock_tick() -> None:
    """To 10 ms, not to the whole second ``btime`` is rounded to: a GC mark phase lasts ~1 s at 50,000
    Secrets, so a second's error would put the other client's slow requests in the wrong phase."""
    before = time.time()
    proc = subprocess.Popen(["sleep", "5"])
    try:
        assert abs(process_start(proc.pid) - before) < 0.1
    finally:
        proc.kill()
        proc.wait()
