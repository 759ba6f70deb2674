"""aflow: an async-native workflow orchestrator with Airflow's vocabulary."""

from aflow.authoring.assets import Asset, AssetAll, AssetAny, AssetEvent, AssetWatcher
from aflow.authoring.baseoperator import BaseOperator, chain
from aflow.authoring.dag import DAG, dag
from aflow.authoring.deadlines import DeadlineAlert, DeadlineReference
from aflow.authoring.operators.bash import BashOperator
from aflow.authoring.operators.empty import EmptyOperator
from aflow.authoring.operators.python import PythonOperator
from aflow.authoring.params import Param
from aflow.authoring.sensors import (
    BaseSensorOperator,
    DateTimeSensor,
    ExternalTaskSensor,
    FileSensor,
    HttpSensor,
    PokeReturnValue,
    SqlSensor,
    TimeDeltaSensor,
    WebhookSensor,
)
from aflow.authoring.taskflow import task
from aflow.authoring.webhooks import Webhook
from aflow.clock import Clock, ManualClock, SystemClock
from aflow.exceptions import AflowError, RunBusy, SkipTask, TaskFailure
from aflow.notifications import BaseNotifier, SmtpNotifier, WebhookNotifier
from aflow.orchestrator import Orchestrator, RunHandle
from aflow.runtime.backfill import BackfillProgress, BackfillResult, BackfillRun
from aflow.secrets import Connection, SecretsBackend, Variable, configure_secrets
from aflow.states import DagRunState, RunType, TaskState, TriggerRule, WeightRule

__version__ = "0.1.0"

__all__ = [
    "AflowError",
    "Asset",
    "AssetAll",
    "AssetAny",
    "AssetEvent",
    "AssetWatcher",
    "BackfillProgress",
    "BackfillResult",
    "BackfillRun",
    "BaseNotifier",
    "BaseOperator",
    "BaseSensorOperator",
    "BashOperator",
    "Clock",
    "Connection",
    "DAG",
    "DagRunState",
    "DateTimeSensor",
    "DeadlineAlert",
    "DeadlineReference",
    "EmptyOperator",
    "ExternalTaskSensor",
    "FileSensor",
    "HttpSensor",
    "ManualClock",
    "Orchestrator",
    "Param",
    "PokeReturnValue",
    "PythonOperator",
    "RunBusy",
    "RunHandle",
    "RunType",
    "SecretsBackend",
    "SkipTask",
    "SmtpNotifier",
    "SqlSensor",
    "SystemClock",
    "TaskFailure",
    "TaskState",
    "TimeDeltaSensor",
    "TriggerRule",
    "Variable",
    "Webhook",
    "WebhookNotifier",
    "WebhookSensor",
    "WeightRule",
    "chain",
    "configure_secrets",
    "dag",
    "task",
]
