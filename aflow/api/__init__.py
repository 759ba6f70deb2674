"""aflow's HTTP side: the REST API under /api/v1 (aflow.api.v1)."""

from aflow.api.app import create_app, serve_api

__all__ = ["create_app", "serve_api"]
