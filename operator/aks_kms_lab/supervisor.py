"""``python -m aks_kms_lab.supervisor --dir DIR [--apiservers N] [--roll-interval S] [--lag-last S]``: run one
lab until SIGTERM (started by ``lab up``).

Writes ``DIR/ready`` once everything serves, or ``DIR/failed`` (and exits 1) if start-up fails.
Its etcd and kube-apiserver are tied to this process: they die with it, even on SIGKILL.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path

from .lab import LabPaths, LabRuntime


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aks_kms_lab.supervisor")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--apiservers", type=int, default=1)
    parser.add_argument("--roll-interval", type=float, default=0.0)
    parser.add_argument("--lag-last", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    paths = LabPaths(args.dir.resolve())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runtime = LabRuntime(paths.root, apiservers=args.apiservers, roll_interval=args.roll_interval,
                         lag_last_seconds=args.lag_last)
    try:
        runtime.start()
    except BaseException:
        paths.failed.write_text(traceback.format_exc())
        traceback.print_exc()
        return 1
    logging.getLogger("aks_kms_lab").info("lab ready in %s", paths.root)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        logging.getLogger("aks_kms_lab").info("stopping the lab")
        runtime.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
