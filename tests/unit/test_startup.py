"""startup: classifying azure-identity's one exception type, and network reasons without object reprs."""

from __future__ import annotations

import aiohttp
import pytest

from aks_kms_operator import startup


@pytest.mark.parametrize(("text", "kind"), [
    ("ClientSecretCredential.get_token failed: Authentication failed: HTTPSConnection(host='127.0.0.1', port=1): "
     "Failed to establish a new connection: [Errno 111] Connection refused", "unreachable"),
    ("DefaultAzureCredential failed to retrieve a token from the included credentials.\nAttempted credentials:\n\t"
     "EnvironmentCredential: EnvironmentCredential authentication unavailable.", "missing"),
    ("ClientSecretCredential.get_token failed: (invalid_client) AADSTS7000215: Invalid client secret provided.",
     "refused"),
    ("AADSTS700016: Application with identifier 'x' was not found; unavailable", "refused"),
    ("HTTPSConnectionPool: Max retries exceeded (Caused by SSLError(SSLCertVerificationError("
     "'certificate verify failed: self-signed certificate')))", "untrusted"),
])
def test_azure_failures_are_told_apart(text: str, kind: str) -> None:
    assert startup._azure_kind(text) == kind


def test_network_reasons_are_a_few_words() -> None:
    refused = aiohttp.ClientConnectorError(aiohttp.client_reqrep.ConnectionKey(
        "127.0.0.1", 1, True, True, None, None, None), ConnectionRefusedError(111, "Connect call failed"))
    assert startup._network_reason(refused, 10) == "connection refused"
    assert startup._network_reason(TimeoutError(), 10) == "no answer within 10s"
    assert startup._azure_reason("... [Errno 111] Connection refused") == "connection refused"


def test_a_problem_is_one_line_with_its_fix() -> None:
    line = str(startup.StartupProblem("no Kubernetes credentials", "set KUBECONFIG"))
    assert line == "no Kubernetes credentials. Fix: set KUBECONFIG" and "\n" not in line
