"""aks-kms-operator: run the operator, plan a policy change, or (with the lab extra) drive the local lab.

The runtime never imports aks_kms_lab; the lab subcommand loads it on demand so a production image
can leave it out. Help texts are plain text with an example each (tests/unit/test_cli_help.py).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

LOG_FORMATS = {"text": "FULL", "plain": "PLAIN", "json": "JSON"}


def _run(args: argparse.Namespace) -> int:
    import kopf

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    stop = _startup_checks(args)
    if stop is not None:
        return stop
    failed = _serve_metrics(args.metrics_address)
    if failed:
        return failed
    kopf.configure(
        verbose=args.verbose,
        debug=args.debug,
        log_format=getattr(kopf.LogFormat, LOG_FORMATS[args.log_format]),
    )
    # azure-core logs each HTTP try (URL and every header) at INFO, the level kopf gives the root logger:
    # hundreds of lines a reconcile that say nothing the metrics and status do not. Failures still log.
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
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


def _serve_metrics(address: str) -> int:
    """/metrics (aks_kms_operator.metrics) before kopf starts, so a standby replica answers scrapes too."""
    from .metrics import serve

    try:
        serve(address)
    except (ValueError, OSError) as err:
        print(f"aks-kms-operator run: metrics: {err} (--metrics-address {address!r}; an empty value disables "
              "/metrics)", file=sys.stderr)
        return 78
    return 0


def _startup_checks(args: argparse.Namespace) -> int | None:
    """Kubernetes credentials, API server, CRD and Azure credentials, each failure one line (startup.py)."""
    from .startup import run_checks

    return run_checks(args.kubeconfig or "")


def _plan(args: argparse.Namespace) -> int:
    if bool(args.name) == bool(args.filename):
        raise UsageError("plan needs exactly one of NAME (a policy in the cluster) or -f FILE")
    from .plancmd import run_plan

    return run_plan(args)


EXIT_USAGE = 64  # sysexits.h EX_USAGE; not 2, which plan uses for "change planned"

DESCRIPTION = """\
Reconcile AKS KMS etcd encryption from a ClusterEncryptionPolicy: enable, rotate or disable it
through ARM, prove the key switch, and re-encrypt every Secret."""
EXAMPLES = {
    "main": "examples:\n  aks-kms-operator run --kubeconfig ~/.kube/config\n"
            "  aks-kms-operator plan -f clusters/prod/encryption-policy.yaml\n"
            "  aks-kms-operator lab up",
    "run": "example:\n  KUBECONFIG=~/.kube/config AZURE_TENANT_ID=... AZURE_CLIENT_ID=... \\\n"
           "    aks-kms-operator run --liveness= --log-format=json\n\n"
           "exit codes: 0 stopped cleanly; 78 configuration that cannot fix itself (the one line on\n"
           "stderr names it and the fix); an unreachable API server is retried, one line per attempt.",
    "plan": "examples:\n  aks-kms-operator plan -f clusters/prod/encryption-policy.yaml\n"
            "  aks-kms-operator plan default -o json\n\n"
            "exit codes: 0 no change; 2 change planned; 3 blocked (a human must act first);\n"
            "1 the plan could not be computed; 64 usage error. plan writes nothing.",
    "lab": "example:\n  aks-kms-operator lab up && aks-kms-operator lab --help",
}


class UsageError(Exception):
    """A command line that cannot work; printed like argparse's own errors."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors exiting 64 instead of 2 (2 means "change planned" for plan)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _sub(sub: argparse._SubParsersAction, name: str, help_text: str,  # type: ignore[type-arg]
         **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand whose help is plain text followed by an example."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text,
                                                     epilog=EXAMPLES[name],
                                                     formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    return parser


def _add_plan(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    plan = _sub(sub, "plan", "show what the operator would do for a policy (from a file or the cluster), "
                             "writing nothing")
    plan.add_argument("name", nargs="?", default="", help="a ClusterEncryptionPolicy already in the cluster")
    plan.add_argument("-f", "--filename", default="", metavar="FILE",
                      help="a YAML file with the policy (- for stdin); the cluster's policy of the same name "
                           "supplies the status ledger")
    plan.add_argument("-o", "--output", choices=("text", "json"), default="text")
    plan.add_argument("--kubeconfig", default="", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    plan.set_defaults(func=_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aks-kms-operator", description=DESCRIPTION, epilog=EXAMPLES["main"],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = _sub(sub, "run", "run the operator against the current cluster")
    run.add_argument("--kubeconfig", default="", help="kubeconfig file (default: in-cluster, then $KUBECONFIG)")
    run.add_argument("--liveness", default=os.environ.get("AKS_KMS_LIVENESS", "http://0.0.0.0:8080/healthz"),
                     help="liveness endpoint URL; empty to disable")
    run.add_argument("--metrics-address", default=os.environ.get("AKS_KMS_METRICS_ADDRESS", ""),
                     help="host:port serving Prometheus /metrics, e.g. 0.0.0.0:8081 (default: "
                          "$AKS_KMS_METRICS_ADDRESS, else empty: no /metrics)")
    run.add_argument("--log-format", choices=sorted(LOG_FORMATS), default=os.environ.get("AKS_KMS_LOG_FORMAT",
                                                                                          "text"),
                     help="text, plain or json (default: $AKS_KMS_LOG_FORMAT, else text)")
    run.add_argument("--verbose", action="store_true", help="log more")
    run.add_argument("--debug", action="store_true", help="log kopf's debug output too")
    run.set_defaults(func=_run)
    _add_plan(sub)
    _sub(sub, "lab", "the local AKS-in-a-box lab (needs the [lab] extra); aks-kms-operator lab --help",
         add_help=False)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        parser.error(str(err))


if __name__ == "__main__":
    sys.exit(main())
