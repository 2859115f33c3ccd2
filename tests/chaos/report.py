"""Print the chaos report (``python -m tests.chaos.report [path]``): runs, faults by kind, violations."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

from .test_chaos import REPORT


def summarize(runs: list[dict]) -> str:
    faults: Counter[str] = Counter()
    for run in runs:
        faults.update(run.get("faults") or {})
    violations = [v for run in runs for v in run.get("violations") or []]
    steps = [s for run in runs for s in run.get("stepSeconds") or []]
    lines = [f"chaos: {len(runs)} run(s), {len(steps)} converged step(s), "
             f"seeds {', '.join(str(r['seed']) for r in runs)}",
             "faults injected: " + (", ".join(f"{k} {n}" for k, n in sorted(faults.items())) or "none")
             + f" (total {sum(faults.values())})"]
    if steps:
        lines.append(f"step time: median {sorted(steps)[len(steps) // 2]:.1f}s, max {max(steps):.1f}s")
    lines.append(f"invariant violations: {len(violations)}")
    lines += [f"  ! {v.splitlines()[0][:300]}" for v in violations[:20]]
    return "\n".join(lines)


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else REPORT
    if not path.exists():
        print(f"no chaos report at {path}")
        return 1
    print(summarize(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
