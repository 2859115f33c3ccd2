"""Fill a cluster with Secrets for the demo, the e2e tests and the benchmarks.

Secrets get random content; what is recorded (``seed.json``) is only a SHA-256 digest of each
Secret's type and data (``verify.secret_digest``, the digest ``lab verify`` checks), so the lab can
prove content survived every rewrite without keeping or printing the data itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aks_kms_operator.kube import Credentials, KubeClient, KubeError

from .verify import secret_digest

SEED_LABEL = "lab.aks-kms.dev/seeded"


def namespace_names(count: int, prefix: str = "team") -> list[str]:
    width = max(2, len(str(count - 1)))
    return [f"{prefix}-{i:0{width}d}" for i in range(count)]


async def seed(
    credentials: Credentials,
    secrets: int,
    namespaces: int,
    *,
    prefix: str = "team",
    concurrency: int = 32,
    value_bytes: int = 64,
) -> dict[str, str]:
    """Create namespaces and ``secrets`` Secrets spread evenly; return name → data digest."""
    names = namespace_names(namespaces, prefix)
    digests: dict[str, str] = {}
    queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue(maxsize=concurrency * 4)
    async with KubeClient(credentials, pool_size=concurrency) as kube:
        for ns in names:
            try:
                await kube.request("POST", "/api/v1/namespaces",
                                   body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            except KubeError as err:
                if err.status != 409:
                    raise

        async def worker() -> None:
            while (item := await queue.get()) is not None:
                ns, name = item
                data = {"value": base64.b64encode(os.urandom(value_bytes)).decode(),
                        "username": base64.b64encode(name.encode()).decode()}
                body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": name, "namespace": ns, "labels": {SEED_LABEL: "true"}},
                        "data": data}
                try:
                    await kube.request("POST", f"/api/v1/namespaces/{ns}/secrets", body=body,
                                       accept="application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
                except KubeError as err:
                    if err.status != 409:
                        raise
                    await kube.request("PUT", f"/api/v1/namespaces/{ns}/secrets/{name}", body=body,
                                       accept="application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1")
                digests[f"{ns}/{name}"] = secret_digest(body)

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        for i in range(secrets):
            ns = names[i % len(names)]
            await queue.put((ns, f"seed-{i:06d}"))
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks)
    return digests


def save_digests(path: Path, digests: Mapping[str, str]) -> None:
    existing: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    existing.update(digests)
    path.write_text(json.dumps(existing, sort_keys=True))
