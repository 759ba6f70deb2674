"""Deferrable waits for aflow, shaped like Airflow's triggers so ported ones fit.

This package depends on anyio, httpx, watchfiles, aiosqlite and asyncpg only; it never
imports aflow. A trigger is a small serializable object (`classpath` + JSON kwargs)
whose `async run()` yields TriggerEvents; the first event resumes the waiting task.
"""

from triggers.base import BaseTrigger, TriggerEvent
from triggers.shared import Resources, current_resources, use_resources

__all__ = ["BaseTrigger", "Resources", "TriggerEvent", "current_resources", "use_resources"]
