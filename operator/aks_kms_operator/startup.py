"""First-run checks: say in one line what is missing and how to fix it, before kopf starts.

Without these, a new user's first ``aks-kms-operator run`` with no kubeconfig printed a Python
traceback and kopf retried silently every 60 seconds; a missing CRD or refused Azure credentials
surfaced only later, as a stream of errors per reconcile. Each check here ends in one of three ways:

* fine: nothing is printed;
* ``StartupProblem`` with ``transient=False``: configuration that cannot fix itself (no or unusable
  Kubernetes credentials, credentials the API server refuses, RBAC that forbids listing policies, no
  CRD, no or refused Azure credentials). The CLI prints the one line and exits ``EXIT_CONFIG`` (78,
  sysexits' EX_CONFIG); the pod's restart is the retry once someone fixed it;
* ``StartupProblem`` with ``transient=True``: the API server cannot be reached (yet). The CLI prints
  the line and tries again with a growing delay. An unreachable Entra ID is only a warning: every
  reconcile reaches Azure anyway and reports a failure in the policy's status.

``plan`` runs the same Kubernetes and Azure checks and exits 1 on any of them (it does not wait).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from .api import v1alpha1 as api
from .kube import CredentialSource, KubeClient, KubeError

EXIT_CONFIG = 78  # sysexits.h EX_CONFIG: configuration error
CRD_FIX = ("kubectl apply -f manifests/crd/clusterencryptionpolicies.yaml, or install the Helm chart "
           "(helm install aks-kms-operator charts/aks-kms-operator)")
RBAC_FIX = ("bind the chart's ClusterRole to this identity (helm upgrade --install aks-kms-operator "
            "charts/aks-kms-operator), or run with a kubeconfig that may list clusterencryptionpolicies")
AZURE_CREDENTIALS_FIX = ("set AZURE_TENANT_ID and AZURE_CLIENT_ID with workload identity (the AKS webhook sets "
                         "AZURE_FEDERATED_TOKEN_FILE when the service account is labelled "
                         "azure.workload.identity/use: \"true\"), or AZURE_CLIENT_SECRET; see docs/install.md")


@dataclass
class StartupProblem(Exception):
    """What is missing and how to fix it, in one line."""

    what: str
    fix: str
    transient: bool = False

    def __str__(self) -> str:
        return f"{self.what}. Fix: {self.fix}" if self.fix else self.what


def _first_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------ Kubernetes


def kube_source(kubeconfig: str = "") -> CredentialSource:
    """The credential source ``run`` and ``plan`` use, loaded once: every way it can fail is one line."""
    if kubeconfig:
        if not os.path.isfile(os.path.expanduser(kubeconfig)):
            raise StartupProblem(f"the kubeconfig {kubeconfig} does not exist",
                                 "pass an existing file to --kubeconfig")
        source = CredentialSource.from_kubeconfig(kubeconfig)
    else:
        try:
            source = CredentialSource.discover()
        except Exception as err:  # kopf.LoginError: neither in a pod nor a kubeconfig
            raise StartupProblem(
                "no Kubernetes credentials: not in a pod with a service account token, and no kubeconfig at "
                f"{os.environ.get('KUBECONFIG') or '~/.kube/config'}",
                "set KUBECONFIG (or --kubeconfig) to a kubeconfig for the cluster, or run in a pod "
                "(the Helm chart)") from err
    try:
        source.snapshot()
    except Exception as err:  # ConfigException, a missing certificate file, an exec plugin that failed
        raise StartupProblem(f"the Kubernetes credentials from {source.origin} cannot be used: {_first_line(err)}",
                             "fix that kubeconfig (kubectl --kubeconfig <file> get ns must work), "
                             "or point KUBECONFIG at another") from err
    return source


async def check_kubernetes(source: CredentialSource, *, timeout: float = 10.0) -> None:
    """The API server answers, accepts our credentials, serves the CRD, and lets us list policies."""
    server = source.snapshot().server
    policies = f"/apis/{api.GROUP}/{api.VERSION}/{api.PLURAL}"
    try:
        async with KubeClient(source, pool_size=1, timeout=timeout) as kube:
            await _ready(source, server, timeout)
            try:
                group = await kube.request("GET", f"/apis/{api.GROUP}/{api.VERSION}")
            except KubeError as err:
                if err.status == 404:
                    raise StartupProblem(f"the ClusterEncryptionPolicy CRD ({api.PLURAL}.{api.GROUP}) is not "
                                         f"installed in the cluster at {server}", CRD_FIX) from err
                raise
            if not any(r.get("name") == api.PLURAL for r in group.get("resources") or []):
                raise StartupProblem(f"the API server at {server} does not serve {api.PLURAL}.{api.GROUP}", CRD_FIX)
            await kube.request("GET", policies, params={"limit": "1"})
    except StartupProblem:
        raise
    except KubeError as err:
        if err.status == 401:
            raise StartupProblem(f"the API server at {server} refused the credentials from {source.origin} "
                                 "(401 Unauthorized)",
                                 "renew the token or certificate in that kubeconfig (kubectl get ns must work)"
                                 ) from err
        if err.status == 403:
            user = re.search(r'User "([^"]+)"', err.message)
            who = f"{user.group(1)} (from {source.origin})" if user else f"from {source.origin}"
            raise StartupProblem(f"the identity {who} may not list {api.PLURAL} (403 Forbidden)", RBAC_FIX) from err
        if err.status in (429,) or err.status >= 500:
            raise StartupProblem(f"the API server at {server} answered {err.status} {err.reason}",
                                 "none: retried", transient=True) from err
        raise StartupProblem(f"the API server at {server} answered {err.status} {err.reason}: "
                             f"{_first_line(err.message, 120)}", "check the cluster and its API server") from err
    except aiohttp.ClientConnectorCertificateError as err:
        raise StartupProblem(f"the API server certificate at {server} is not trusted: {_first_line(err, 120)}",
                             "set certificate-authority(-data) in the kubeconfig to the cluster's CA") from err
    except (aiohttp.ClientSSLError, ssl.SSLError) as err:
        raise StartupProblem(f"TLS with the API server at {server} failed: {_first_line(err, 120)}",
                             "check the kubeconfig's server URL and certificates") from err
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        reason = _network_reason(err, timeout)
        raise StartupProblem(f"cannot reach the Kubernetes API server at {server} ({reason})",
                             "none if it is starting; otherwise check the server URL in the kubeconfig and the "
                             "network", transient=True) from err


async def _ready(source: CredentialSource, server: str, timeout: float) -> None:
    """A starting API server answers before it has loaded the CRDs from etcd: its /apis/<group> is a 404
    until /readyz passes (the crd-informer-synced check). Not ready is transient, so a missing CRD is
    only concluded from a ready API server. /readyz is public by default; any other answer is ignored."""
    creds = source.snapshot()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
            session.get(f"{server}/readyz", headers=dict(creds.headers), ssl=creds.ssl) as resp:
        if resp.status in (500, 503):
            raise StartupProblem(f"the API server at {server} is not ready yet (/readyz answered {resp.status})",
                                 "none: retried", transient=True)


def _network_reason(err: BaseException, timeout: float) -> str:
    """``connection refused``, ``no answer within 10s``, a DNS failure: without aiohttp's object reprs."""
    cause = getattr(err, "os_error", None) or err
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError) or isinstance(err, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.split(" (", 1)[0]
    return _first_line(cause, 120)


# ----------------------------------------------------------------------------------------- Azure


def _azure_kind(text: str) -> str:
    """missing | untrusted | refused | unreachable, from azure-identity's error text (one exception type
    for all of them)."""
    lowered = text.lower()
    if "certificate verify failed" in lowered:
        return "untrusted"
    if re.search(r"failed to establish a new connection|connection refused|timed out|name or service not known|"
                 r"temporary failure in name resolution|max retries exceeded|connection aborted|"
                 r"remote end closed", lowered) and "aadsts" not in lowered:
        return "unreachable"
    if "unavailable" in lowered and "aadsts" not in lowered:
        return "missing"
    return "refused"


def _azure_reason(text: str) -> str:
    """The network failure in azure-identity's text, in a few words."""
    lowered = text.lower()
    for needle, words in (("connection refused", "connection refused"), ("timed out", "no answer"),
                          ("name or service not known", "host name not found"),
                          ("temporary failure in name resolution", "host name not found")):
        if needle in lowered:
            return words
    return " ".join(text.split())[:120]


def check_azure() -> str:
    """Get one ARM token. Returns "" when fine, or a warning line when Entra ID cannot be reached
    (transient: reconciles keep trying); raises ``StartupProblem`` for missing or refused credentials."""
    from azure.core.exceptions import AzureError

    from .azure.config import AzureSettings
    from .azure.pipeline import build_credential

    try:
        settings = AzureSettings.from_env()
    except ValueError as err:
        raise StartupProblem(f"the Azure settings in the environment are invalid: {err}",
                             "fix that variable (see docs/install.md)") from err
    try:
        credential = build_credential(settings)
    except ValueError as err:  # e.g. an empty tenant or client ID with a client secret
        raise StartupProblem(f"the Azure credentials in the environment are incomplete: {_first_line(err)}",
                             AZURE_CREDENTIALS_FIX) from err
    # azure-identity logs its own multi-line account of the failure as a warning; the line below says it once.
    quiet = logging.getLogger("azure")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        credential.get_token(settings.arm_scope)
        return ""
    except AzureError as err:
        text = str(err)
        kind = _azure_kind(text)
        if kind == "unreachable":
            return (f"cannot reach Entra ID at {settings.authority_host} for an Azure token ({_azure_reason(text)}); "
                    "starting anyway: every reconcile retries and reports Azure errors in the policy's status")
        if kind == "untrusted":
            raise StartupProblem(f"the certificate of Entra ID at {settings.authority_host} is not trusted",
                                 "set AKS_KMS_CA_BUNDLE to a PEM file with its CA") from err
        if kind == "missing" and not settings.client_secret and not settings.federated_token_file:
            raise StartupProblem("no Azure credentials: no client secret, no workload identity token file, and no "
                                 "managed identity answered", AZURE_CREDENTIALS_FIX) from err
        code = re.search(r"AADSTS\d+", text)
        who = f"client {settings.client_id or '?'} in tenant {settings.tenant_id or '?'}"
        raise StartupProblem(
            f"Entra ID at {settings.authority_host} refused the Azure credentials of {who}"
            f" ({code.group(0) if code else _first_line(err, 160)})",
            "check AZURE_TENANT_ID, AZURE_CLIENT_ID and the client secret or federated credential "
            "(az identity federated-credential list)") from err
    finally:
        quiet.setLevel(level)
        close = getattr(credential, "close", None)
        if close is not None:
            close()


# ------------------------------------------------------------------------------------ for run


def say(line: str) -> None:
    """One line on stderr, prefixed with the program name (before logging is configured)."""
    print(f"aks-kms-operator: {line}", file=sys.stderr, flush=True)


def run_checks(kubeconfig: str = "", *, sleep: Callable[[float], None] = time.sleep,
               max_delay: float = 10.0) -> int | None:
    """The startup preflight of ``run``: None to go on, else the exit code (``EXIT_CONFIG``, or 0 when
    stopped while waiting).

    An unreachable API server is retried (2 s, 4 s, 8 s, then every ``max_delay``) with one line per attempt;
    everything else that is wrong stops the process with one line. SIGTERM while waiting exits 0 (a
    clean stop, like SIGTERM to the running operator), Ctrl-C 130.
    """
    delay = 2.0
    previous = signal.signal(signal.SIGTERM, _stop)  # kopf installs its own handler later
    try:
        source = kube_source(kubeconfig)
        while True:
            try:
                asyncio.run(check_kubernetes(source))
                break
            except StartupProblem as problem:
                if not problem.transient:
                    raise
                say(f"{problem.what}; retrying in {delay:g}s")
                sleep(delay)
                delay = min(max_delay, delay * 2)
        warning = check_azure()
        if warning:
            say(warning)
        return None
    except StartupProblem as problem:
        say(str(problem))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except _Stopped:
        return 0  # asked to stop while waiting for the API server: a clean stop, as after kopf.run
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stopped(SystemExit):
    """SIGTERM while the startup checks wait. A SystemExit, because asyncio's event loop logs and swallows
    ordinary exceptions raised in its callbacks, where a signal handler may run."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped()
