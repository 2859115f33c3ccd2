"""The lab's verifier: which key encrypted each stored Secret, and is every Secret's content intact.

Two independent checks, both used after every lab scenario:

* :func:`verify_etcd` reads every Secret's raw value from etcd and counts them per key URL
  (KMS v2 key ID → key URL), plaintext (``identity``), other providers, and unreadable values.
  It never decrypts and never needs the API server.
* :func:`snapshot_digests` / :func:`check_digests` read Secrets through the API server and compare
  a SHA-256 of each Secret's ``type`` and ``data`` with one taken earlier. This legitimately reads
  Secret data (it is the lab's verifier, not the operator), but only digests leave this module:
  nothing prints or stores the data itself.
* :func:`read_through_api` says which Secrets the API cannot serve at all (stored under a key no
  API server loads any more: "no matching prefix found"). One such Secret makes the API fail the
  whole namespace's list, so a failed list is followed by one GET per Secret (names from etcd or
  from the seed), and only the ones that fail are counted: the verifier reports them, never raises.

``python -m aks_kms_lab.verify --etcd URL [--key URL ...] [--expect URL|identity] [--namespaces] [--json]``
prints the etcd report; with ``--expect`` it exits 1 unless every Secret is stored that way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .etcdraw import SECRETS_PREFIX, Classifier, EtcdClient

IDENTITY = "identity"
UNREADABLE = "unreadable"


@dataclass
class VerifyReport:
    """Counts of stored Secrets by how they are stored.

    ``counts`` is keyed by label: a key URL (KMS v2 under a known key),
    ``kms-v2-unknown-key:<key ID>``, ``identity`` (plaintext), another provider such as
    ``aescbc:v1:key1``, or ``unreadable``. ``namespaces`` has the same counts per namespace when asked.
    """

    prefix: str
    revision: int = 0
    total: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    namespaces: dict[str, Counter[str]] | None = None
    unreadable_keys: list[str] = field(default_factory=list)  # first few etcd keys, for the message

    @property
    def plaintext(self) -> int:
        return self.counts[IDENTITY]

    @property
    def unreadable(self) -> int:
        return self.counts[UNREADABLE]

    def under(self, label: str) -> int:
        return self.counts[label]

    def all_under(self, label: str) -> bool:
        """Every stored Secret is stored as ``label`` (a key URL or ``identity``); true when none exist."""
        return self.counts[label] == self.total

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prefix": self.prefix,
            "revision": self.revision,
            "total": self.total,
            "counts": dict(sorted(self.counts.items())),
            "plaintext": self.plaintext,
            "unreadable": self.unreadable,
            "unreadableKeys": self.unreadable_keys,
        }
        if self.namespaces is not None:
            out["namespaces"] = {ns: dict(sorted(c.items())) for ns, c in sorted(self.namespaces.items())}
        return out

    def render(self) -> str:
        lines = [f"{self.total} Secrets in etcd under {self.prefix} (revision {self.revision})"]
        lines += [f"  {count:>8}  {label}" for label, count in sorted(self.counts.items(), key=lambda i: -i[1])]
        if self.unreadable_keys:
            lines.append("  unreadable: " + ", ".join(self.unreadable_keys))
        for ns, counts in sorted((self.namespaces or {}).items()):
            lines.append(f"  {ns}: " + ", ".join(f"{n} {label}" for label, n in sorted(counts.items())))
        return "\n".join(lines)


def verify_etcd(etcd_url: str, key_urls: Iterable[str] = (), *, prefix: str = SECRETS_PREFIX,
                by_namespace: bool = False, page_size: int = 500) -> VerifyReport:
    """Classify every value under ``prefix``; ``key_urls`` are the key versions to name in the report."""
    classifier = Classifier(tuple(key_urls))
    report = VerifyReport(prefix=prefix, namespaces={} if by_namespace else None)
    per_ns: defaultdict[str, Counter[str]] = defaultdict(Counter)
    client = EtcdClient(etcd_url)
    for raw in client.scan(prefix, page_size=page_size):
        stored = classifier.classify(raw.value)
        report.total += 1
        report.counts[stored.label] += 1
        if stored.kind == UNREADABLE and len(report.unreadable_keys) < 10:
            report.unreadable_keys.append(raw.key)
        if by_namespace:
            per_ns[raw.namespace][stored.label] += 1
    report.revision = client.last_revision
    if by_namespace:
        report.namespaces = dict(per_ns)
    return report


def secret_names(etcd_url: str, *, prefix: str = SECRETS_PREFIX, page_size: int = 1000) -> dict[str, list[str]]:
    """``{namespace: [name, ...]}`` of every Secret stored in etcd (keys only: no value is read)."""
    names: defaultdict[str, list[str]] = defaultdict(list)
    for raw in EtcdClient(etcd_url).scan(prefix, page_size=page_size, keys_only=True):
        names[raw.namespace].append(raw.name)
    return dict(names)


# ---------------------------------------------------------------------------------- content digests


class ApiRequester(Protocol):
    """``ControlPlane.request`` shape: an authenticated call returning (status, decoded JSON)."""

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]: ...


def secret_digest(secret: dict[str, Any]) -> str:
    """SHA-256 of a Secret's ``type`` and ``data`` (base64 values as served), in canonical JSON."""
    canonical = json.dumps({"type": secret.get("type", ""), "data": secret.get("data") or {}},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ListFailed(RuntimeError):
    """The API would not list a namespace's Secrets (one undecryptable Secret is enough for that)."""

    def __init__(self, namespace: str | None, status: int, body: Any) -> None:
        super().__init__(f"listing Secrets{f' in {namespace}' if namespace else ''} failed: HTTP {status}")
        self.status = status
        self.reason = _reason(body)


def _reason(body: Any) -> str:
    """The API's error message (a Status ``message``; never Secret data)."""
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or "")[:200]
    return str(body or "")[:200]


def _iter_secrets(api: ApiRequester, namespace: str | None, page_size: int) -> Iterable[dict[str, Any]]:
    base = f"/api/v1/namespaces/{namespace}/secrets" if namespace else "/api/v1/secrets"
    cont = ""
    while True:
        query = {"limit": str(page_size), **({"continue": cont} if cont else {})}
        status, body = api.request("GET", f"{base}?{urllib.parse.urlencode(query)}")
        if status != 200:
            raise ListFailed(namespace, status, body)
        yield from body.get("items") or []
        cont = (body.get("metadata") or {}).get("continue") or ""
        if not cont:
            return


@dataclass
class ApiReadReport:
    """What the API could serve: digests of readable Secrets, and the ones it could not decrypt."""

    digests: dict[str, str] = field(default_factory=dict)  # namespace/name -> digest
    unreadable: dict[str, str] = field(default_factory=dict)  # namespace/name -> the API's error message
    gone: list[str] = field(default_factory=list)  # asked for by name, 404

    def first_unreadable(self, n: int = 10) -> list[str]:
        return sorted(self.unreadable)[:n]


_RETRY_STATUSES = {429, 502, 503, 504}


def _get_one(api: ApiRequester, namespace: str, name: str, attempts: int = 4) -> tuple[int, Any]:
    """GET one Secret, retrying what a rolling replica or a busy server answers (not a decrypt failure)."""
    status, body = 0, None
    for attempt in range(attempts):
        try:
            status, body = api.request("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except OSError as err:
            status, body = 0, str(err)
        if status not in _RETRY_STATUSES and status != 0:
            return status, body
        time.sleep(0.2 * (attempt + 1))
    return status, body


def read_through_api(api: ApiRequester, names: dict[str, list[str]], *, page_size: int = 500,
                     everything: bool = False) -> ApiReadReport:
    """Read every Secret in ``names`` (``{namespace: [name, ...]}``) through the API.

    A namespace is listed in pages; if the list fails, each named Secret is fetched on its own and
    those the API will not serve are recorded as unreadable with its message. ``everything``: first
    try one cluster-wide list (Secrets of every namespace), falling back to the above if it fails."""
    report = ApiReadReport()
    if everything:
        try:
            for secret in _iter_secrets(api, None, page_size):
                meta = secret["metadata"]
                report.digests[f"{meta['namespace']}/{meta['name']}"] = secret_digest(secret)
            return report
        except (ListFailed, OSError):
            report.digests.clear()
    for ns in sorted(names):
        try:
            for secret in _iter_secrets(api, ns, page_size):
                meta = secret["metadata"]
                report.digests[f"{meta['namespace']}/{meta['name']}"] = secret_digest(secret)
            continue
        except (ListFailed, OSError):
            pass
        for name in sorted(names[ns]):
            status, body = _get_one(api, ns, name)
            if status == 200 and isinstance(body, dict):
                report.digests[f"{ns}/{name}"] = secret_digest(body)
            elif status == 404:
                report.gone.append(f"{ns}/{name}")
            else:
                report.unreadable[f"{ns}/{name}"] = f"HTTP {status}: {_reason(body)}"
    return report


def snapshot_digests(api: ApiRequester, *, namespaces: Sequence[str] | None = None,
                     page_size: int = 500) -> dict[str, str]:
    """``{"namespace/name": sha256}`` for every Secret (or those in ``namespaces``), read through the API."""
    digests: dict[str, str] = {}
    for ns in namespaces or [None]:  # type: ignore[list-item]
        for secret in _iter_secrets(api, ns, page_size):
            meta = secret["metadata"]
            digests[f"{meta['namespace']}/{meta['name']}"] = secret_digest(secret)
    return digests


@dataclass
class DigestReport:
    checked: int = 0
    mismatched: list[str] = field(default_factory=list)  # namespace/name whose content changed
    missing: list[str] = field(default_factory=list)  # in the snapshot, gone now
    unexpected: list[str] = field(default_factory=list)  # present now, not in the snapshot
    unreadable: list[str] = field(default_factory=list)  # in the snapshot, the API cannot decrypt it now

    @property
    def ok(self) -> bool:
        return not self.mismatched and not self.missing and not self.unreadable

    def to_json(self) -> dict[str, Any]:
        return {"checked": self.checked, "ok": self.ok, "mismatched": self.mismatched, "missing": self.missing,
                "unexpected": self.unexpected, "unreadable": self.unreadable}


def check_digests(api: ApiRequester, expected: dict[str, str], *, namespaces: Sequence[str] | None = None,
                  page_size: int = 500, names: dict[str, list[str]] | None = None,
                  read: ApiReadReport | None = None) -> DigestReport:
    """Re-read every Secret through the API and compare with ``expected`` (from :func:`snapshot_digests`).

    Never raises for a Secret the API cannot decrypt: it is listed in ``unreadable`` (and the report
    is not ok). ``names`` (e.g. :func:`secret_names`) adds Secrets beyond the expected ones to read;
    ``read`` reuses a :func:`read_through_api` result instead of reading again."""
    if read is None:
        wanted: defaultdict[str, set[str]] = defaultdict(set)
        for key in expected:
            ns, name = key.split("/", 1)
            wanted[ns].add(name)
        for ns, more in (names or {}).items():
            wanted[ns].update(more)
        for ns in namespaces or []:
            wanted.setdefault(ns, set())
        if namespaces is not None:
            wanted = defaultdict(set, {ns: v for ns, v in wanted.items() if ns in set(namespaces)})
        read = read_through_api(api, {ns: sorted(v) for ns, v in wanted.items()}, page_size=page_size,
                                everything=namespaces is None)
    now = read.digests
    if namespaces is not None:
        keep = set(namespaces)
        now = {k: v for k, v in now.items() if k.split("/", 1)[0] in keep}
    report = DigestReport()
    for name, digest in sorted(expected.items()):
        if name in read.unreadable:
            report.unreadable.append(name)
            continue
        if name not in now:
            report.missing.append(name)
            continue
        report.checked += 1
        if now[name] != digest:
            report.mismatched.append(name)
    report.unexpected = sorted(set(now) - set(expected))
    return report


# ---------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aks_kms_lab.verify",
                                     description="Report which key encrypted every Secret stored in etcd.")
    parser.add_argument("--etcd", required=True, help="etcd client URL, e.g. http://127.0.0.1:2379")
    parser.add_argument("--key", action="append", default=[], dest="keys",
                        help="a versioned Key Vault key URL to recognise (repeatable)")
    parser.add_argument("--prefix", default=SECRETS_PREFIX)
    parser.add_argument("--namespaces", action="store_true", help="also count per namespace")
    parser.add_argument("--expect", help="exit 1 unless every Secret is under this key URL (or 'identity')")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    keys = list(args.keys) + ([args.expect] if args.expect and args.expect != IDENTITY else [])
    report = verify_etcd(args.etcd, keys, prefix=args.prefix, by_namespace=args.namespaces)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.render())
    if args.expect and not report.all_under(args.expect):
        print(f"not every Secret is stored as {args.expect}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
