"""Variables, Connections, the secrets backends they are looked up through, encryption at
rest of connection secrets, and the masking of secrets in logs."""

from aflow.secrets.backends import (
    EnvironmentBackend,
    SecretsBackend,
    StoreBackend,
    configure_secrets,
    connection_from_record,
    connection_to_record,
)
from aflow.secrets.connection import Connection
from aflow.secrets.crypto import generate_key
from aflow.secrets.masking import add_secret, is_sensitive_key, mask, mask_value
from aflow.secrets.variable import Variable

__all__ = [
    "Connection",
    "EnvironmentBackend",
    "SecretsBackend",
    "StoreBackend",
    "Variable",
    "add_secret",
    "configure_secrets",
    "connection_from_record",
    "connection_to_record",
    "generate_key",
    "is_sensitive_key",
    "mask",
    "mask_value",
]
