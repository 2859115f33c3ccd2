"""``ArmReader``: one thin typed ARM client on azure-mgmt-core's ``ARMPipelineClient``.

Why not the generated SDKs: the preflight needs four read-only GETs (a vault, a user-assigned
identity, role assignments, role definitions) plus the ``/resources`` list to find a vault by name.
The generated packages for them (azure-mgmt-keyvault, azure-mgmt-msi, azure-mgmt-authorization) are
three more dependencies, several megabytes of models and their own release cadence, for responses we
read five fields of. ``ARMPipelineClient`` gives the same ARM pipeline (bearer auth with CAE
challenges, retries, logging with secrets redacted) and we parse the JSON into ``model.py`` facts.
"""

from __future__ import annotations

from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError
from azure.core.pipeline import policies
from azure.core.rest import HttpRequest
from azure.mgmt.core import ARMPipelineClient
from azure.mgmt.core.exceptions import ARMErrorFormat
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy, ARMHttpLoggingPolicy

from ..model import AccessPolicy, IdentityState, RoleGrant, VaultState
from .config import AzureSettings
from .errors import translate
from .pipeline import build_credential, client_kwargs

KEYVAULT_API = "2023-07-01"
MSI_API = "2023-01-31"
AUTHZ_API = "2022-04-01"
RESOURCES_API = "2021-04-01"


class SdkArmReader:
    """ArmReader gateway. Role definitions are cached: built-in ones never change."""

    def __init__(self, settings: AzureSettings, credential: TokenCredential | None = None) -> None:
        self._settings = settings
        credential = credential or build_credential(settings)
        kwargs = client_kwargs(settings)
        self._client: ARMPipelineClient[Any, Any] = ARMPipelineClient(
            base_url=settings.arm_endpoint,
            policies=[
                policies.RequestIdPolicy(),
                policies.HeadersPolicy(),
                policies.UserAgentPolicy(sdk_moniker="aks-kms-operator-arm-reader"),
                policies.ContentDecodePolicy(),
                policies.RedirectPolicy(),
                kwargs["retry_policy"],
                ARMChallengeAuthenticationPolicy(credential, settings.arm_scope),
                policies.DistributedTracingPolicy(),
                ARMHttpLoggingPolicy(),
            ],
            transport=kwargs["transport"],
        )
        self._definitions: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self._client.close()

    def _get(self, path_or_url: str, api_version: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        url = path_or_url if path_or_url.startswith("https://") else self._settings.arm_endpoint + path_or_url
        query = {} if "api-version=" in url else {"api-version": api_version}
        query.update(params or {})
        try:
            response = self._client.send_request(HttpRequest("GET", url, params=query))
            if response.status_code != 200:
                raise HttpResponseError(response=response, error_format=ARMErrorFormat)
            body = response.json()
        except Exception as exc:
            raise translate(exc) from exc
        return body if isinstance(body, dict) else {}

    def _list(self, path: str, api_version: str, params: dict[str, str]) -> list[dict[str, Any]]:
        page = self._get(path, api_version, params)
        items = list(page.get("value") or [])
        while page.get("nextLink"):
            page = self._get(page["nextLink"], api_version)
            items.extend(page.get("value") or [])
        return items

    def vault(self, resource_id: str) -> VaultState:
        body = self._get(resource_id, KEYVAULT_API)
        props = body.get("properties") or {}
        acls = props.get("networkAcls") or {}
        return VaultState(
            resource_id=str(body.get("id") or resource_id),
            tenant_id=str(props.get("tenantId") or ""),
            public_network_access=str(props.get("publicNetworkAccess") or "Enabled"),
            network_default_action=str(acls.get("defaultAction") or "Allow"),
            network_bypass=str(acls.get("bypass") or "AzureServices"),
            rbac_authorization=bool(props.get("enableRbacAuthorization")),
            soft_delete=props.get("enableSoftDelete") is not False,  # absent means on since 2020
            purge_protection=bool(props.get("enablePurgeProtection")),
            access_policies=tuple(
                AccessPolicy(
                    object_id=str(p.get("objectId") or ""),
                    key_permissions=tuple(str(k) for k in (p.get("permissions") or {}).get("keys") or ()),
                )
                for p in props.get("accessPolicies") or ()
            ),
        )

    def find_vault(self, subscription_id: str, vault_name: str) -> str | None:
        name = vault_name.replace("'", "''")
        items = self._list(
            f"/subscriptions/{subscription_id}/resources",
            RESOURCES_API,
            {"$filter": f"resourceType eq 'Microsoft.KeyVault/vaults' and name eq '{name}'"},
        )
        matches = [i for i in items if str(i.get("name", "")).lower() == vault_name.lower()]
        return str(matches[0]["id"]) if matches else None

    def identity(self, resource_id: str) -> IdentityState:
        body = self._get(resource_id, MSI_API)
        props = body.get("properties") or {}
        return IdentityState(
            resource_id=str(body.get("id") or resource_id),
            principal_id=str(props.get("principalId") or ""),
            client_id=str(props.get("clientId") or ""),
            tenant_id=str(props.get("tenantId") or ""),
        )

    def _definition(self, definition_id: str) -> dict[str, Any]:
        key = definition_id.lower()
        if key not in self._definitions:
            self._definitions[key] = self._get(definition_id, AUTHZ_API)
        return self._definitions[key]

    def role_grants(self, principal_id: str, scope: str) -> tuple[RoleGrant, ...]:
        principal = principal_id.replace("'", "''")
        assignments = self._list(
            scope.rstrip("/") + "/providers/Microsoft.Authorization/roleAssignments",
            AUTHZ_API,
            {"$filter": f"atScope() and assignedTo('{principal}')"},
        )
        grants = []
        for assignment in assignments:
            props = assignment.get("properties") or {}
            definition = self._definition(str(props.get("roleDefinitionId") or ""))
            dprops = definition.get("properties") or {}
            perms = dprops.get("permissions") or []
            grants.append(
                RoleGrant(
                    scope=str(props.get("scope") or ""),
                    role_name=str(dprops.get("roleName") or ""),
                    actions=tuple(a for p in perms for a in p.get("actions") or ()),
                    data_actions=tuple(a for p in perms for a in p.get("dataActions") or ()),
                    not_actions=tuple(a for p in perms for a in p.get("notActions") or ()),
                    not_data_actions=tuple(a for p in perms for a in p.get("notDataActions") or ()),
                )
            )
        return tuple(grants)
