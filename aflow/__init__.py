"""aflow: an async-native workflow orchestrator with Airflow's vocabulary."""

__version__ = "0.1.0"

from aflow.authoring.baseoperator import BaseOperator, chain
from aflow.authoring.dag import DAG, dag
from aflow.authoring.operators.bash import BashOperator
from aflow.authoring.operators.empty import EmptyOperator
from aflow.authoring.operators.python import PythonOperator
from aflow.authoring.params import Param
from aflow.authoring.taskflow import task

__all__ = [
    "BaseOperator",
    "BashOperator",
    "DAG",
    "EmptyOperator",
    "Param",
    "PythonOperator",
    "chain",
    "dag",
    "task",
]
