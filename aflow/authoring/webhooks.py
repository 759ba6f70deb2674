"""Named webhook endpoints of a DAG: `POST /api/v1/webhooks/{name}`.

    with DAG("deploy", params={"ref": Param(type="string")},
             webhooks=[Webhook("github-push", secret_env="GITHUB_WEBHOOK_SECRET",
                               conf=lambda payload, headers: {"ref": payload["ref"]})]):
        ...

A request must carry an HMAC-SHA256 signature of its raw body made with the shared
secret, GitHub's way: `X-Hub-Signature-256: sha256=<hex digest>` (the header name can be
changed). A signed request then either creates a run of the DAG (run type `webhook`,
its conf mapped from the payload, checked against the DAG's params) or, with
`deliver_to`, delivers the payload to the WebhookSensors waiting on that key. A
delivery id header (GitHub's `X-GitHub-Delivery` by default) makes redeliveries safe: the
same id answers the run the first delivery created.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from aflow.exceptions import DagDefinitionError

ConfMapper = Callable[[Any, Mapping[str, str]], dict[str, Any]]
KeyMapper = Callable[[Any, Mapping[str, str]], str]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class WebhookSecretMissing(Exception):  # noqa: N818 - a server misconfiguration, said as such
    """The secret's environment variable is not set in the server's environment."""


class Webhook:
    def __init__(
        self,
        name: str,
        *,
        secret_env: str | None = None,
        secret: str | None = None,
        conf: ConfMapper | None = None,
        deliver_to: str | KeyMapper | None = None,
        signature_header: str = "X-Hub-Signature-256",
        delivery_id_header: str | None = "X-GitHub-Delivery",
    ) -> None:
        """`secret_env` names the environment variable holding the shared secret (read
        at each request, so it can be rotated without a restart); `secret` gives it
        inline (for tests). `conf(payload, headers)` maps a payload to the run's conf
        (default: `{"payload": payload}`). `deliver_to` (a key, or `(payload, headers)
        -> key`) delivers to WebhookSensors instead of creating a run."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise DagDefinitionError(
                f"webhook name {name!r}: use 1-100 letters, digits, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if (secret_env is None) == (secret is None):
            raise DagDefinitionError(f"webhook {name!r}: give exactly one of secret_env or secret")
        if secret is not None and not secret:
            raise DagDefinitionError(f"webhook {name!r}: the secret is empty")
        if conf is not None and deliver_to is not None:
            raise DagDefinitionError(
                f"webhook {name!r}: conf maps a run's conf and deliver_to sends to sensors "
                "instead of creating a run; give one of them"
            )
        self.name = name
        self.secret_env = secret_env
        self._secret = secret
        self.conf = conf
        self.deliver_to = deliver_to
        self.signature_header = signature_header
        self.delivery_id_header = delivery_id_header

    def secret(self) -> str:
        if self._secret is not None:
            return self._secret
        assert self.secret_env is not None
        value = os.environ.get(self.secret_env, "")
        if not value:
            raise WebhookSecretMissing(
                f"webhook {self.name!r}: its secret is not configured (set the environment "
                f"variable {self.secret_env} for the server)"
            )
        return value

    def signature_ok(self, body: bytes, header_value: str | None) -> bool:
        """Whether `header_value` is `sha256=<hex HMAC of body>` with this secret."""
        if not header_value or not header_value.startswith("sha256="):
            return False
        expected = hmac.new(self.secret().encode(), body, hashlib.sha256).hexdigest().encode()
        given = header_value.removeprefix("sha256=").strip().lower()
        # bytes: compare_digest refuses str with non-ASCII characters (a forged header)
        return hmac.compare_digest(expected, given.encode("utf-8", "replace"))

    def describe(self) -> dict[str, Any]:
        """What the DAG's stored structure says of it (never the secret)."""
        return {"name": self.name, "action": "deliver" if self.deliver_to is not None else "trigger",
                "signature_header": self.signature_header}


def sign(secret: str, body: bytes) -> str:
    """The signature header value for `body` (for clients and tests)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
