"""aks-kms-operator lab up|down|status|env|seed|verify: the local AKS-in-a-box (see lab.py).

A real etcd and kube-apiserver replicas behind a TCP balancer, a fake Azure (ARM, Entra ID, Key Vault)
over HTTPS and real KMS v2 plugins, all on 127.0.0.1. Help texts are plain text (argparse prints
them as they are), each with an example: tests/unit/test_cli_help.py checks both.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import lab


def _up(args: argparse.Namespace) -> int:
    state = lab.up(args.dir, timeout=args.timeout, apiservers=args.apiservers, roll_interval=args.roll_interval,
                   lag_last_seconds=args.lag_last)
    root = Path(args.dir).resolve()
    if state == "running":
        print(f"the lab in {root} is already running")
        return 0
    s = lab.status(root)
    print(f"lab up in {root}")
    print(f"  API server  {s.get('apiserver')}   etcd {s.get('etcd')}   fake Azure {s.get('fakeAzure')}")
    replicas = s.get("replicas") or []
    if len(replicas) > 1:
        print(f"  replicas    {len(replicas)} kube-apiservers behind the balancer: "
              + ", ".join(r["server"] for r in replicas))
    print(f"  kubeconfig  {s['kubeconfig']}")
    print(f"  env         {root / 'env'} (operator environment; LAB_KEY_V1..V3 are the key versions)")
    print("next:")
    print("  aks-kms-operator lab seed --secrets 2000 --namespaces 20")
    print(f"  set -a; . {root / 'env'}; set +a; aks-kms-operator run --liveness=")
    print(f"  kubectl --kubeconfig {s['kubeconfig']} apply -f <a ClusterEncryptionPolicy>   (see hack/demo.sh)")
    print("  aks-kms-operator lab verify")
    print('  eval "$(aks-kms-operator lab env --az)"   # the real Azure CLI against the lab (docs/lab.md)')
    print("  aks-kms-operator lab down")
    return 0


def _down(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    print(f"lab in {root} stopped and removed" if lab.down(root) else f"no lab in {root}")
    return 0


def _status(args: argparse.Namespace) -> int:
    s = lab.status(args.dir)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0 if s["running"] else 1
    print(f"lab {s['dir']}: {s['state']}" + (f" (supervisor pid {s['supervisorPid']})" if s.get("supervisorPid")
                                               else ""))
    if s["state"] == "absent":
        return 1
    for key in ("apiserver", "etcd", "fakeAzure", "kubeconfig"):
        if s.get(key):
            print(f"  {key:<11} {s[key]}")
    if s.get("azProxy"):
        print(f"  az proxy    {s['azProxy']} (HTTPS_PROXY of `lab env --az`: Azure's host names -> the fake)")
    if s.get("balancer"):
        print(f"  balancer    {s['balancer']} (TCP, round-robin over new connections)")
    for r in s.get("replicas") or []:
        health = {True: "ready", False: "NOT READY", None: "-"}[r.get("ready")]
        loaded = (r.get("kms") or {})
        keys = ", ".join(k for k in (loaded.get("current"), loaded.get("previous")) if k) or "no KMS key"
        print(f"  replica {r['index']}   {r['server']}  {health:<9}  loads {keys}")
    kms = s.get("kms")
    if kms:
        print(f"  KMS         {'enabled' if kms.get('enabled') else 'disabled'}")
        print(f"  current     {kms.get('current') or '-'}")
        print(f"  previous    {kms.get('previous') or '-'}")
    print(f"  plugins     {', '.join(s['plugins']) or '-'}")
    if s["state"] == "stale":
        print("  the supervisor is not running: `aks-kms-operator lab down` cleans up")
    return 0 if s["running"] else 1


def _seed(args: argparse.Namespace) -> int:
    n = lab.seed_lab(args.dir, secrets=args.secrets, namespaces=args.namespaces, prefix=args.prefix)
    print(f"seeded {args.secrets} Secrets in {args.namespaces} namespaces; {n} digests in "
          f"{Path(args.dir).resolve() / 'seed.json'}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    result = lab.verify_lab(args.dir, expect=args.expect, content=not args.no_content)
    print(json.dumps(result.to_json(), indent=2) if args.json else result.render())
    return 0 if result.ok else 1


LAB_DESCRIPTION = """\
The local AKS-in-a-box: real etcd and kube-apiserver replicas behind a TCP balancer, a fake Azure
(ARM, Entra ID, Key Vault) over HTTPS and real KMS v2 plugins, all on 127.0.0.1."""

EXAMPLES = {
    "lab": "example:\n  aks-kms-operator lab up && aks-kms-operator lab seed --secrets 200\n"
           "  aks-kms-operator lab verify && aks-kms-operator lab down",
    "up": "example:\n  aks-kms-operator lab up --apiservers 3 --roll-interval 5",
    "down": "example:\n  aks-kms-operator lab down",
    "status": "example:\n  aks-kms-operator lab status --json",
    "seed": "example:\n  aks-kms-operator lab seed --secrets 500 --namespaces 5",
    "verify": "example:\n  aks-kms-operator lab verify --expect identity --no-content",
    "env": 'example:\n  eval "$(aks-kms-operator lab env --az)"   # then the Azure docs\' az commands, as written',
}


def _sub(sub: argparse._SubParsersAction, name: str, help_text: str,  # type: ignore[type-arg]
         **kwargs: object) -> argparse.ArgumentParser:
    """A subcommand whose help is plain text with an example (RawDescriptionHelpFormatter keeps the layout)."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text,
                                                     epilog=EXAMPLES.get(name),
                                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                                     **kwargs)  # type: ignore[arg-type]
    return parser


def _env(args: argparse.Namespace) -> int:
    if args.az:
        print(lab.az_env_script(args.dir), end="")
    else:
        print(lab.LabPaths(Path(args.dir).resolve()).env.read_text(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aks-kms-operator lab", description=LAB_DESCRIPTION,
                                     epilog=EXAMPLES["lab"], formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=lab.DEFAULT_DIR, help="lab directory (default: <repo>/.lab)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = _sub(sub, "up", parents=[common], help_text="start the lab (detached) and wait until it is ready")
    p.add_argument("--timeout", type=float, default=lab.READY_TIMEOUT)
    p.add_argument("--apiservers", type=int, default=lab.DEFAULT_APISERVERS,
                   help=f"kube-apiserver replicas behind the TCP balancer (default {lab.DEFAULT_APISERVERS})")
    p.add_argument("--roll-interval", type=float, default=0.0,
                   help="seconds AKS-sim waits between rolling one replica and the next after a KMS change")
    p.add_argument("--lag-last", type=float, default=None, metavar="S",
                   help="finish the ARM operation before the last replica is rolled, and roll it S seconds later")
    p.set_defaults(func=_up)
    _sub(sub, "down", parents=[common], help_text="stop the lab and remove its directory").set_defaults(func=_down)
    p = _sub(sub, "status", parents=[common], help_text="is the lab running; ports, kubeconfig, KMS slots")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)
    p = _sub(sub, "env", parents=[common],
             help_text="print the lab's operator environment (KEY=VALUE); with --az, shell exports and the "
                       "lab user's login for the real Azure CLI (HTTPS_PROXY to the lab's proxy, "
                       "REQUESTS_CA_BUNDLE, AZURE_CONFIG_DIR inside the lab, KUBECONFIG); see docs/lab.md")
    p.add_argument("--az", action="store_true", help='shell code for eval "$(aks-kms-operator lab env --az)"')
    p.set_defaults(func=_env)
    p = _sub(sub, "seed", parents=[common], help_text="create Secrets (content digests go to seed.json)")
    p.add_argument("--secrets", type=int, default=2000)
    p.add_argument("--namespaces", type=int, default=20)
    p.add_argument("--prefix", default="team")
    p.set_defaults(func=_seed)
    p = _sub(sub, "verify", parents=[common], help_text="which key encrypted every Secret in etcd; content check")
    p.add_argument("--json", action="store_true")
    p.add_argument("--expect", help="key URL or 'identity' (default: encryptedWith of ClusterEncryptionPolicy "
                                    "'default', if reported)")
    p.add_argument("--no-content", action="store_true", help="skip the content check")
    p.set_defaults(func=_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return int(args.func(args) or 0)
    except lab.LabError as err:
        print(f"aks-kms-operator lab {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
