"""The HTTP clients' TLS context is built once (off the event loop) and shared."""

from __future__ import annotations

import ssl

import pytest

from aflow.runtime.tls import client_ssl_context

pytestmark = pytest.mark.anyio


async def test_one_context_is_built_and_shared() -> None:
    first = await client_ssl_context()
    assert isinstance(first, ssl.SSLContext) and first.verify_mode is ssl.CERT_REQUIRED
    assert await client_ssl_context() is first
