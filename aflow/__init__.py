"""aflow: an async-native workflow orchestrator with Airflow's vocabulary."""

from aflow.authoring.assets import Asset, AssetAll, AssetAny, AssetEvent, AssetWatcher
from aflow.authoring.baseoperator import BaseOperator, chain
from aflow.authoring.dag import DAG, dag
from aflow.authoring.deadlines import DeadlineAlert, DeadlineReference
from aflow.authoring.operators.bash import BashOperator
from aflow.authoring.operators.branch import BranchPythonOperator, ShortCircuitOperator
from aflow.authoring.operators.email import EmailOperator
from aflow.authoring.operators.empty import EmptyOperator
from aflow.authoring.operators.http import HttpOperator
from aflow.authoring.operators.python import PythonOperator
from aflow.authoring.operators.sql import SQLExecuteQueryOperator
from aflow.authoring.operators.trigger_dagrun import TriggerDagRunOperator
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
from aflow.authoring.setup_teardown import setup, teardown
from aflow.authoring.taskflow import task
from aflow.authoring.taskgroup import TaskGroup, task_group
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
    "BranchPythonOperator",
    "Clock",
    "Connection",
    "DAG",
    "DagRunState",
    "DateTimeSensor",
    "DeadlineAlert",
    "DeadlineReference",
    "EmailOperator",
    "EmptyOperator",
    "ExternalTaskSensor",
    "FileSensor",
    "HttpOperator",
    "HttpSensor",
    "ManualClock",
    "Orchestrator",
    "Param",
    "PokeReturnValue",
    "PythonOperator",
    "RunBusy",
    "RunHandle",
    "RunType",
    "SQLExecuteQueryOperator",
    "SecretsBackend",
    "ShortCircuitOperator",
    "SkipTask",
    "SmtpNotifier",
    "SqlSensor",
    "SystemClock",
    "TaskFailure",
    "TaskGroup",
    "TaskState",
    "TimeDeltaSensor",
    "TriggerDagRunOperator",
    "TriggerRule",
    "Variable",
    "Webhook",
    "WebhookNotifier",
    "WebhookSensor",
    "WeightRule",
    "chain",
    "configure_secrets",
    "dag",
    "setup",
    "task",
    "task_group",
    "teardown",
]
