"""Encryption at rest of connection secrets: Fernet (AES-128-CBC with HMAC-SHA256, from
the `cryptography` package) under the key of setting `core.fernet_key`.

The setting may hold several keys separated by commas: the first encrypts, all of them
decrypt, so a key can be rotated (put the new key first, re-save the connections, then drop
the old one). Without a key, nothing secret is written or read: a clear error says how to
make one (`aflow connections generate-key`); a secret is never stored in clear.
"""

from __future__ import annotations

from typing import Any

from aflow.exceptions import ConfigError, SecretsError

FERNET_KEY_SETTING = "core.fernet_key"
FERNET_KEY_ENV = "AFLOW__CORE__FERNET_KEY"

HOW_TO_MAKE_A_KEY = (
    f"make one with `aflow connections generate-key` and set it as {FERNET_KEY_SETTING} "
    f"({FERNET_KEY_ENV}, or [core] fernet_key in aflow.toml)"
)


def generate_key() -> str:
    """A new random Fernet key (URL-safe base64 text)."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


class SecretCipher:
    """Encrypts and decrypts text with the configured key(s)."""

    def __init__(self, key: str) -> None:
        from cryptography.fernet import Fernet, MultiFernet

        keys = [k.strip() for k in key.split(",") if k.strip()]
        if not keys:
            raise ConfigError(f"{FERNET_KEY_SETTING} is empty; {HOW_TO_MAKE_A_KEY}")
        try:
            self._fernet: Any = MultiFernet([Fernet(k.encode("ascii")) for k in keys])
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(
                f"{FERNET_KEY_SETTING} is not a valid Fernet key (32 url-safe base64-encoded "
                f"bytes); {HOW_TO_MAKE_A_KEY}"
            ) from None

    def encrypt(self, text: str) -> str:
        return self._fernet.encrypt(text.encode("utf-8")).decode("ascii")  # type: ignore[no-any-return]

    def decrypt(self, token: str, what: str) -> str:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")  # type: ignore[no-any-return]
        except (InvalidToken, UnicodeError):
            raise SecretsError(
                f"cannot decrypt {what}: it was stored under another {FERNET_KEY_SETTING}"
            ) from None


def cipher_or_error(key: str | None, what: str) -> SecretCipher:
    """The cipher of `key`, or a SecretsError saying that `what` needs a key."""
    if not key:
        raise SecretsError(f"cannot {what}: no encryption key is set; {HOW_TO_MAKE_A_KEY}")
    return SecretCipher(key)
