"""A fake Azure (Entra ID, ARM with AKS's KMS rules, Key Vault keys) on one local HTTPS port.

Use it through the real Azure SDKs: trust ``fake.ca_pem_path``, point the authority and the ARM
endpoint at ``fake.url``, and redirect Key Vault connections to ``fake.url`` while keeping the
``Host: <vault>.vault.azure.net`` header (see ``keyvault.py``).
"""

from .server import FakeAzure, RequestRecord, WriteRecord

__all__ = ["FakeAzure", "RequestRecord", "WriteRecord"]
