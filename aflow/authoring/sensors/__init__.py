"""Sensors: operators that wait for a condition, in Airflow's three modes."""

from aflow.authoring.sensors.base import BaseSensorOperator, PokeReturnValue
from aflow.authoring.sensors.external import ExternalTaskSensor, WebhookSensor
from aflow.authoring.sensors.filesystem import FileSensor
from aflow.authoring.sensors.time import DateTimeSensor, TimeDeltaSensor
from aflow.authoring.sensors.trigger_backed import HttpSensor, SqlSensor, TriggerBackedSensor

__all__ = [
    "BaseSensorOperator",
    "DateTimeSensor",
    "ExternalTaskSensor",
    "FileSensor",
    "HttpSensor",
    "PokeReturnValue",
    "SqlSensor",
    "TimeDeltaSensor",
    "TriggerBackedSensor",
    "WebhookSensor",
]
