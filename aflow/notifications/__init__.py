"""Notifiers: callables that send an alert, usable wherever aflow takes a callback
(`on_failure_callback=`, `on_success_callback=`, `on_retry_callback=` of tasks and DAGs,
and the `callback=` of a DeadlineAlert), alone or in lists."""

from aflow.notifications.base import BaseNotifier, NotificationError, describe
from aflow.notifications.smtp import SmtpNotifier
from aflow.notifications.webhook import WebhookNotifier

__all__ = [
    "BaseNotifier", "NotificationError", "SmtpNotifier", "WebhookNotifier", "describe",
]
