"""``python -m aks_kms_lab.kmsv2``: run one KMS v2 plugin instance, or print a key ID.

    serve --socket PATH --key-id URL [--local-key PEM] [--vault-endpoint URL] [--ca-bundle PEM]
          [--health-cache SECONDS] [--log-level LEVEL]
    key-id URL

``serve`` wraps with the Key Vault key version ``URL`` (``https://<vault>.vault.azure.net/keys/<n>/<v>``):

* through Key Vault (default), configured from the environment exactly like the operator
  (``aks_kms_operator.azure.config``: ``AZURE_*`` credentials and authority, ``AKS_KMS_CA_BUNDLE``,
  ``AKS_KMS_KEYVAULT_ENDPOINT``...); ``--vault-endpoint`` and ``--ca-bundle`` override those two
  variables (the fake Azure at ``https://127.0.0.1:PORT`` and its CA);
* or, with ``--local-key PEM``, with an RSA key from that file (created if missing), no Azure.

It runs until SIGTERM/SIGINT and removes its socket on exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .plugin import PluginServer
from .wrappers import KeyVaultWrapper, KeyWrapper, LocalRsaWrapper, key_id_for


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m aks_kms_lab.kmsv2", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve one key version on a Unix socket")
    serve.add_argument("--socket", required=True, type=Path, help="Unix socket path to listen on")
    serve.add_argument("--key-id", required=True, help="versioned Key Vault key URL")
    serve.add_argument("--local-key", type=Path, help="wrap with this RSA PEM (created if missing), not Key Vault")
    serve.add_argument("--vault-endpoint", help="send Key Vault requests to this https://host:port "
                       "(sets AKS_KMS_KEYVAULT_ENDPOINT)")
    serve.add_argument("--ca-bundle", help="PEM CA bundle for Key Vault and Entra (sets AKS_KMS_CA_BUNDLE)")
    serve.add_argument("--health-cache", type=float, default=5.0,
                       help="seconds a Status verdict (wrap + unwrap) is reused (default 5)")
    serve.add_argument("--log-level", default="INFO")
    key_id = sub.add_parser("key-id", help="print the KMS v2 key ID of a versioned key URL")
    key_id.add_argument("url")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "key-id":
        print(key_id_for(args.url))
        return 0
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().level > logging.DEBUG:  # the SDK logs every request and response at INFO
        logging.getLogger("azure").setLevel(logging.WARNING)
    wrapper: KeyWrapper
    if args.local_key:
        wrapper = LocalRsaWrapper.from_pem_file(args.key_id, args.local_key)
    else:
        env = dict(os.environ)
        if args.vault_endpoint:
            env["AKS_KMS_KEYVAULT_ENDPOINT"] = args.vault_endpoint
        if args.ca_bundle:
            env["AKS_KMS_CA_BUNDLE"] = args.ca_bundle
        wrapper = KeyVaultWrapper.from_env(args.key_id, env)
    server = PluginServer(args.socket, wrapper, health_ttl=args.health_cache).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"serving key ID {server.key_id} for {server.key_url} on {server.endpoint}", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
