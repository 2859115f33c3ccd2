"""``aks-kms-operator``: run the operator, or (when the lab extra is installed) drive the local lab.

The runtime never imports ``aks_kms_lab``; the ``lab`` subcommand loads it on demand so a
production image can leave it out.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

LOG_FORMATS = {"text": "FULL", "plain": "PLAIN", "json": "JSON"}


def _run(args: argparse.Namespace) -> int:
    import kopf

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    kopf.configure(
        verbose=args.verbose,
        debug=args.debug,
        log_format=getattr(kopf.LogFormat, LOG_FORMATS[args.log_format]),
    )
    importlib.import_module("aks_kms_operator.handlers")  # registers the handlers
    logging.getLogger("aks_kms_operator").info("starting aks-kms-operator")
    kopf.run(
        clusterwide=True,
        # No kopf peering (it pauses lower priorities, it does not exclude equals): mutual exclusion
        # between replicas is the Lease in aks_kms_operator.leader, taken in a startup handler.
        standalone=True,
        liveness_endpoint=args.liveness or None,
        # the standby answers the liveness endpoint itself until kopf's own server starts
        memo=kopf.Memo(liveness_endpoint=args.liveness or None),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aks-kms-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the current cluster")
    run.add_argument("--kubeconfig", default="", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--liveness", default=os.environ.get("AKS_KMS_LIVENESS", "http://0.0.0.0:8080/healthz"),
                     help="liveness endpoint URL; empty to disable")
    run.add_argument("--log-format", choices=sorted(LOG_FORMATS), default=os.environ.get("AKS_KMS_LOG_FORMAT",
                                                                                          "text"))
    run.add_argument("--verbose", action="store_true")
    run.add_argument("--debug", action="store_true")
    run.set_defaults(func=_run)
    sub.add_parser("lab", help="the local AKS-in-a-box lab (needs the [lab] extra)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lab"]:
        try:
            lab_cli = importlib.import_module("aks_kms_lab.cli")
        except ImportError as err:
            print(f"aks-kms-operator lab: the lab is not installed ({err}); pip install 'aks-kms-operator[lab]'",
                  file=sys.stderr)
            return 2
        return int(lab_cli.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
