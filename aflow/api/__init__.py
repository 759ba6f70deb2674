"""aflow's HTTP side: the REST API under /api/v1 (aflow.api.v1) and the web UI
(aflow.web), served together by `serve_api`.

`create_app` and `serve_api` are loaded on first use, so that importing a light part
(aflow.api.auth, for the CLI's `users` and `tokens`) does not load the whole web stack."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aflow.api.app import create_app, serve_api

__all__ = ["ROLES", "create_app", "serve_api"]

ROLES = ("viewer", "admin")  # what a user may do: read; read and change


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve_api"):
        from aflow.api import app

        return getattr(app, name)
    raise AttributeError(f"module 'aflow.api' has no attribute {name!r}")
