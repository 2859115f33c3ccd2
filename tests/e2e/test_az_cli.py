"""The Azure docs' manual KMS procedure, run with the real Azure CLI against the lab, as a user would.

After the one documented step (``eval "$(aks-kms-operator lab env --az)"``: the lab's proxy, CA,
config directory, kubeconfig and a service-principal login), every command below is the seed's
(``/work/shared/seed``: "Azure Kubernetes Service 클러스터에 키 관리 서비스 etcd 암호화 추가") with only
the lab's names filled in: resource group ``lab-rg``, cluster ``lab-aks``, the cluster's identity
``lab-aks-identity``, and a vault and key that the procedure itself creates. ``lab verify`` runs after
every re-encryption. Once az has moved the cluster to the private vault, the operator adopts it and
reaches Ready without writing to ARM; the policy is then deleted (deletionPolicy Retain) and az
disables KMS, as the seed's last section does.

``lab env --az`` signs in the lab's directory user, so the seed's "assign yourself Key Vault Crypto
Officer" step (``az ad signed-in-user show``, Microsoft Graph's ``/me``) runs as written too.

The steps print a table of command, exit code and seconds (``pytest -s`` shows it).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aks_kms_lab import lab
from aks_kms_lab.controlplane import REPO_ROOT

from ..support import wait_for
from .conftest import SCRIPT, LabHarness, running_lab

pytestmark = pytest.mark.e2e

AZ = REPO_ROOT / ".cache" / "azure-cli" / "bin" / "az"
RG, CLUSTER, IDENTITY, VAULT, KEY = "lab-rg", "lab-aks", "lab-aks-identity", "azkmsvault", "azkey"
REENCRYPT = "kubectl get secrets --all-namespaces -o json | kubectl replace -f -"
SECRETS, NAMESPACES = 60, 3


def cluster_puts(fake: Any) -> list[Any]:
    return [w for w in fake.writes if w.method == "PUT" and "/managedclusters/" in w.path.lower()]


class Shell:
    """Runs the seed's shell lines with the environment ``lab env --az`` produced; logs exit codes."""

    def __init__(self, env: dict[str, str], root: Path, fake: Any) -> None:
        self.env = env
        self.root = root
        self.fake = fake
        self.log: list[tuple[str, int, float]] = []
        self.operations: dict[int, float] = {}  # log index of an `az aks update` -> its ARM operation's seconds

    def run(self, line: str, *, rc: int = 0, keep: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``line`` in bash (pipefail). ``keep``: a variable the line sets, carried into later lines."""
        script = line + (f'\nprintf "%s" "${keep}"' if keep else "")
        start = time.monotonic()
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", script], env=self.env, capture_output=True,
                              text=True, timeout=300)
        self.log.append((line, proc.returncode, time.monotonic() - start))
        if line.startswith("az aks update") and proc.returncode == 0:
            self._note_operation(len(self.log) - 1)
        # stdout of kubectl replace holds Secret names only; stderr is az's or kubectl's error text.
        assert proc.returncode == rc, f"{line}\nexit {proc.returncode} (expected {rc})\n{proc.stderr[:3000]}"
        if keep:
            value = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
            assert value, f"{line} left {keep} empty\n{proc.stderr[-3000:]}"
            self.env[keep] = value
        return proc

    def verify(self, expect: str) -> None:
        self.run(f"{SCRIPT} lab verify --dir {self.root} --expect {expect}")

    def _note_operation(self, index: int) -> None:
        """How long the lab's "AKS" took (the API server roll): the rest of az's time is az's own."""
        put = cluster_puts(self.fake)[-1]
        op = self.fake.operation(put.summary["operation"])
        if op and op.get("endTime"):
            ended, started = dt.datetime.fromisoformat(op["endTime"]), dt.datetime.fromisoformat(op["startTime"])
            self.operations[index] = (ended - started).total_seconds()

    def table(self) -> str:
        rows = []
        for i, (line, rc, seconds) in enumerate(self.log):
            note = f"   [ARM operation {self.operations[i]:.1f}s]" if i in self.operations else ""
            rows.append(f"{rc:>3}  {seconds:6.1f}s  {line}{note}")
        return "\n".join(rows)


@pytest.fixture(scope="module")
def lab_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabHarness]:
    """The e2e lab with ONE API server and few Secrets: this module is about what az sends and gets.
    Every `az aks update` waits for the roll (one API server restart per replica; replicas are
    test_replicas.py's subject) and every re-encryption rewrites every Secret, six times over."""
    with running_lab(tmp_path_factory.mktemp("lab") / "lab", apiservers=1, secrets=SECRETS,
                     namespaces=NAMESPACES) as harness:
        yield harness


@pytest.fixture(scope="module")
def sh(lab_env: LabHarness) -> Shell:
    if not AZ.exists():
        pytest.fail(f"the Azure CLI is not installed at {AZ}: run `make azure-cli` (make test does)")
    base = {**os.environ, "PATH": f"{REPO_ROOT / '.cache' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    # The one documented step, exactly as a user runs it; the resulting environment is kept.
    proc = subprocess.run(["bash", "-c", f'eval "$({SCRIPT} lab env --az --dir {lab_env.root})" && env -0'],
                          env=base, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = dict(item.split("=", 1) for item in proc.stdout.split("\0") if "=" in item)
    assert env["HTTPS_PROXY"].startswith("http://127.0.0.1:") and env["AZURE_CONFIG_DIR"].startswith(
        str(lab_env.root))
    return Shell(env, lab_env.root, lab_env.runtime.fake)


def test_seed_procedure_with_the_azure_cli(lab_env: LabHarness, sh: Shell) -> None:
    fake = lab_env.runtime.fake
    try:
        # Public key vault with Azure RBAC, and its key.
        sh.run(f"export KEYVAULT_RESOURCE_ID=$(az keyvault create --name {VAULT} --resource-group {RG} "
               "--enable-rbac-authorization true --query id -o tsv)", keep="KEYVAULT_RESOURCE_ID")
        officer = sh.run('az role assignment create --role "Key Vault Crypto Officer" --assignee-object-id '
                         '$(az ad signed-in-user show --query id -o tsv) --assignee-principal-type "User" '
                         "--scope $KEYVAULT_RESOURCE_ID --query principalId -o tsv")
        assert officer.stdout.strip() == fake.user_object_id  # the lab user signed in by `lab env --az`
        sh.run(f"az keyvault key create --name {KEY} --vault-name {VAULT}")
        sh.run(f"export KEY_ID=$(az keyvault key show --name {KEY} --vault-name {VAULT} --query 'key.kid' -o tsv)",
               keep="KEY_ID")
        key_id = sh.env["KEY_ID"]
        assert key_id.startswith(f"https://{VAULT}.vault.azure.net/keys/{KEY}/")

        # The user-assigned identity (the cluster's) and its permission on the vault.
        sh.run(f"az identity create --name {IDENTITY} --resource-group {RG}")
        sh.run(f"IDENTITY_OBJECT_ID=$(az identity show --name {IDENTITY} --resource-group {RG} "
               "--query 'principalId' -o tsv)", keep="IDENTITY_OBJECT_ID")
        assert sh.env["IDENTITY_OBJECT_ID"] == lab_env.world.principal_id
        grant = ('az role assignment create --role "Key Vault Crypto User" --assignee-object-id $IDENTITY_OBJECT_ID '
                 '--assignee-principal-type "ServicePrincipal" --scope $KEYVAULT_RESOURCE_ID')
        sh.run(grant)
        sh.run(grant)  # again: ARM answers 409 RoleAssignmentExists and az returns the existing assignment

        # Enable KMS with the public vault, re-encrypt, verify.
        sh.run(f'az aks update --name {CLUSTER} --resource-group {RG} --enable-azure-keyvault-kms '
               '--azure-keyvault-kms-key-vault-network-access "Public" --azure-keyvault-kms-key-id $KEY_ID')
        sh.run(REENCRYPT)
        sh.verify(key_id)

        # Rotate to a new key version, check the cluster's keyId, re-encrypt, verify.
        sh.run(f"az keyvault key create --name {KEY} --vault-name {VAULT}")
        sh.run(f"export NEW_KEY_ID=$(az keyvault key show --name {KEY} --vault-name {VAULT} --query 'key.kid' "
               "-o tsv)", keep="NEW_KEY_ID")
        new_key_id = sh.env["NEW_KEY_ID"]
        assert new_key_id != key_id and new_key_id.rsplit("/", 1)[0] == key_id.rsplit("/", 1)[0]
        sh.run(f'az aks update --name {CLUSTER} --resource-group {RG} --enable-azure-keyvault-kms '
               '--azure-keyvault-kms-key-vault-network-access "Public" --azure-keyvault-kms-key-id $NEW_KEY_ID')
        shown = sh.run(f"az aks show --name {CLUSTER} --resource-group {RG} "
                       "--query securityProfile.azureKeyVaultKms.keyId -o tsv")
        assert shown.stdout.strip() == new_key_id
        sh.run(REENCRYPT)
        sh.verify(new_key_id)

        # Public → Private, as the seed describes: disable, re-encrypt, switch the vault, enable Private.
        disable = f"az aks update --name {CLUSTER} --resource-group {RG} --disable-azure-keyvault-kms"
        sh.run(disable)
        sh.run(REENCRYPT)
        sh.verify("identity")
        sh.run(f"az keyvault update --name {VAULT} --resource-group {RG} --public-network-access Disabled")
        sh.run('az role assignment create --role "Key Vault Contributor" --assignee-object-id $IDENTITY_OBJECT_ID '
               '--assignee-principal-type "ServicePrincipal" --scope $KEYVAULT_RESOURCE_ID')
        sh.run(f"az aks update --name {CLUSTER} --resource-group {RG} --enable-azure-keyvault-kms "
               '--azure-keyvault-kms-key-id $NEW_KEY_ID --azure-keyvault-kms-key-vault-network-access "Private" '
               "--azure-keyvault-kms-key-vault-resource-id $KEYVAULT_RESOURCE_ID")
        sh.run(REENCRYPT)
        sh.verify(new_key_id)  # the KMS plugin reaches the private vault through the private link
        outside = sh.run(f"az keyvault key show --name {KEY} --vault-name {VAULT}", rc=1)  # the host does not
        assert "Public network access is disabled" in outside.stderr

        # The operator adopts what az configured (Private, az's vault, the rotated key): Ready, no ARM write.
        puts = cluster_puts(fake)
        assert len(puts) == 4  # enable, rotate, disable, enable Private: all az's
        policy = lab_env.world.policy(key_id=new_key_id, private=True)
        policy["spec"]["kms"]["keyVaultResourceId"] = sh.env["KEYVAULT_RESOURCE_ID"]
        lab_env.cp.apply(policy)
        lab_env.wait_encrypted_with(new_key_id)
        assert cluster_puts(fake) == puts, [w.summary for w in cluster_puts(fake)[len(puts):]]
        # Hand the cluster back (deletionPolicy Retain, the default: AKS is left as it is).
        code, _ = lab_env.cp.request("DELETE", f"{lab.POLICIES}/default")
        assert code == 200
        wait_for(lambda: lab_env.cp.request("GET", f"{lab.POLICIES}/default")[0] == 404, timeout=60,
                 interval=0.5, what="the policy deleted")

        # Disable KMS (after checking it is on), re-encrypt, verify.
        listed = sh.run('az aks list --query "[].{Name:name, KmsEnabled:securityProfile.azureKeyVaultKms.enabled, '
                        'KeyId:securityProfile.azureKeyVaultKms.keyId}" -o table')
        assert CLUSTER in listed.stdout and "True" in listed.stdout and new_key_id in listed.stdout
        sh.run(disable)
        sh.run(REENCRYPT)
        sh.verify("identity")
        assert len(cluster_puts(fake)) == 5  # the operator wrote nothing, before or after
    finally:
        print("\nseed commands against the lab (exit code, seconds, command):\n" + sh.table())
