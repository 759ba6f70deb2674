"""Built-in operators."""

from aflow.authoring.operators.bash import BashOperator
from aflow.authoring.operators.empty import EmptyOperator
from aflow.authoring.operators.python import PythonOperator

__all__ = ["BashOperator", "EmptyOperator", "PythonOperator"]
