"""Rendering templated fields on a per-try copy of a task."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2
import pytest

from aflow.authoring.dag import DAG
from aflow.authoring.operators.bash import BashOperator
from aflow.authoring.operators.python import PythonOperator
from aflow.authoring.params import Param
from aflow.authoring.templating import compiled, date_context, jinja_env, render_template_fields
from aflow.authoring.xcom_arg import ParamRef, XComArg
from aflow.exceptions import TemplateError

LOGICAL = datetime(2024, 3, 5, 6, 7, 8, tzinfo=UTC)


class FakeTI:
    """Stand-in for the runtime's task instance: answers xcom_pull and records the calls."""

    def __init__(self, xcoms: dict[tuple[str, str], Any] | None = None) -> None:
        self.xcoms = dict(xcoms or {})
        self.pulls: list[tuple[str, str]] = []

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        self.pulls.append((task_ids, key))
        return self.xcoms[(task_ids, key)]


def context_for(the_dag: DAG, conf: dict | None = None, ti: FakeTI | None = None) -> dict:
    return {
        **date_context(LOGICAL),
        "logical_date": LOGICAL,
        "params": the_dag.params.resolve(conf),
        "dag": the_dag,
        "dag_run": SimpleNamespace(conf=dict(conf or {}), run_id="manual__1"),
        "run_id": "manual__1",
        "ti": ti or FakeTI(),
    }


def render(task_, context):
    copy = task_.prepare_for_run()
    rendered = render_template_fields(copy, context)
    return copy, rendered


def test_date_context():
    ctx = date_context(LOGICAL)
    assert ctx["ds"] == "2024-03-05"
    assert ctx["ds_nodash"] == "20240305"
    assert ctx["ts"] == "2024-03-05T06:07:08+00:00"
    assert ctx["ts_nodash"] == "20240305T060708"
    assert ctx["ts_nodash_with_tz"] == "20240305T060708+0000"


def test_values_are_rendered_through_lists_and_dicts():
    with DAG("tmpl", params={"table": "events", "limit": Param(10, type="integer")}) as the_dag:
        op = PythonOperator(
            task_id="t",
            python_callable=print,
            op_args=["{{ ds }}", ["{{ params.table }}", 3, None], ("{{ ds_nodash }}",)],
            op_kwargs={
                "where": {"day": "{{ ds }}", "rows": ["{{ params.limit * 2 }}"]},
                "conf": "{{ dag_run.conf['who'] }}",
                "plain": "no braces",
                "number": 7,
            },
            templates_dict={"q": "select * from {{ params.table }} -- {{ run_id }}"},
        )
    copy, rendered = render(op, context_for(the_dag, {"who": "alice", "table": "t2"}))
    assert copy.op_args == ["2024-03-05", ["t2", 3, None], ("20240305",)]
    assert copy.op_kwargs == {
        "where": {"day": "2024-03-05", "rows": ["20"]},
        "conf": "alice",
        "plain": "no braces",
        "number": 7,
    }
    assert copy.templates_dict == {"q": "select * from t2 -- manual__1"}
    assert rendered == {
        "templates_dict": copy.templates_dict,
        "op_args": copy.op_args,
        "op_kwargs": copy.op_kwargs,
    }


def test_rendering_a_copy_leaves_the_dags_task_untouched():
    with DAG("tmpl") as the_dag:
        op = PythonOperator(
            task_id="t",
            python_callable=print,
            op_args=["{{ ds }}"],
            op_kwargs={"nested": {"d": ["{{ ds }}"]}},
        )
    copy, _ = render(op, context_for(the_dag))
    assert copy is not op
    assert copy.op_kwargs == {"nested": {"d": ["2024-03-05"]}}
    assert op.op_args == ["{{ ds }}"]
    assert op.op_kwargs == {"nested": {"d": ["{{ ds }}"]}}
    assert the_dag.get_task("t") is op


def test_only_templated_fields_are_rendered():
    with DAG("tmpl") as the_dag:
        op = BashOperator(
            task_id="b",
            bash_command="echo {{ ds }}",
            env={"DAY": "{{ ds }}"},
            cwd="/tmp/{{ ds_nodash }}",
            doc_md="docs {{ ds }}",
            output_encoding="utf-8",
        )
    copy, rendered = render(op, context_for(the_dag))
    assert copy.bash_command == "echo 2024-03-05"
    assert copy.env == {"DAY": "2024-03-05"}
    assert copy.cwd == "/tmp/20240305"
    assert copy.doc_md == "docs {{ ds }}"
    assert set(rendered) == {"bash_command", "env", "cwd"}


def test_unknown_variable_raises_template_error_naming_task_and_field():
    with DAG("tmpl") as the_dag:
        op = PythonOperator(
            task_id="the_task", python_callable=print, op_kwargs={"x": "{{ not_defined }}"}
        )
    with pytest.raises(TemplateError) as info:
        render(op, context_for(the_dag))
    message = str(info.value)
    assert "'the_task'" in message and "'op_kwargs'" in message and "not_defined" in message
    assert isinstance(info.value.__cause__, jinja2.UndefinedError)


def test_unknown_param_is_an_error_not_an_empty_string():
    with DAG("tmpl", params={"known": 1}) as the_dag:
        op = BashOperator(task_id="b", bash_command="echo {{ params.unknown }}")
    with pytest.raises(TemplateError, match="'bash_command'"):
        render(op, context_for(the_dag))


def test_template_syntax_error_is_a_template_error():
    with DAG("tmpl") as the_dag:
        op = BashOperator(task_id="b", bash_command="echo {{ ds ")
    with pytest.raises(TemplateError, match="'b'"):
        render(op, context_for(the_dag))


def test_templates_are_sandboxed():
    with DAG("tmpl") as the_dag:
        op = BashOperator(
            task_id="b", bash_command="{{ ''.__class__.__mro__[1].__subclasses__() }}"
        )
    with pytest.raises(TemplateError):
        render(op, context_for(the_dag))


def test_xcom_args_are_pulled_from_the_ti_and_not_rendered():
    with DAG("tmpl") as the_dag:
        up = PythonOperator(task_id="up", python_callable=print)
        op = PythonOperator(
            task_id="down",
            python_callable=print,
            op_args=[up.output],
            op_kwargs={"nested": [{"part": XComArg(up, key="part")}], "d": "{{ ds }}"},
        )
    ti = FakeTI({("up", "return_value"): "{{ ds }}", ("up", "part"): {"k": [1, 2]}})
    copy, _ = render(op, context_for(the_dag, ti=ti))
    assert copy.op_args == ["{{ ds }}"]  # an XCom value is data, never a template
    assert copy.op_kwargs == {"nested": [{"part": {"k": [1, 2]}}], "d": "2024-03-05"}
    assert sorted(ti.pulls) == [("up", "part"), ("up", "return_value")]
    assert isinstance(op.op_args[0], XComArg)


def test_param_refs_are_resolved_from_the_run_params():
    with DAG("tmpl", params={"n": 1}) as the_dag:
        op = PythonOperator(
            task_id="t", python_callable=print, op_kwargs={"n": ParamRef("n"), "l": [ParamRef("n")]}
        )
    copy, _ = render(op, context_for(the_dag, {"n": 42}))
    assert copy.op_kwargs == {"n": 42, "l": [42]}


def test_native_rendering_gives_python_objects():
    params = {"n": 3, "items": [1, 2], "flag": False}
    with DAG("native", params=params, render_template_as_native_obj=True) as native_dag:
        native = PythonOperator(
            task_id="t",
            python_callable=print,
            op_kwargs={
                "n": "{{ params.n + 1 }}",
                "items": "{{ params['items'] }}",
                "flag": "{{ params.flag }}",
                "conf": "{{ dag_run.conf }}",
                "text": "n={{ params.n }}",
            },
        )
    copy, _ = render(native, context_for(native_dag, {"x": 1}))
    assert copy.op_kwargs == {
        "n": 4,
        "items": [1, 2],
        "flag": False,
        "conf": {"x": 1},
        "text": "n=3",
    }

    with DAG("text", params=params) as text_dag:
        plain = PythonOperator(
            task_id="t",
            python_callable=print,
            op_kwargs={"n": "{{ params.n + 1 }}", "items": "{{ params['items'] }}"},
        )
    copy, _ = render(plain, context_for(text_dag))
    assert copy.op_kwargs == {"n": "4", "items": "[1, 2]"}


def test_user_defined_macros_and_filters():
    with DAG(
        "macros",
        user_defined_macros={"project": "acme", "double": lambda x: x * 2},
        user_defined_filters={"shout": lambda s: s.upper() + "!"},
    ) as the_dag:
        op = BashOperator(task_id="b", bash_command="echo {{ project | shout }} {{ double(21) }}")
    copy, _ = render(op, context_for(the_dag))
    assert copy.bash_command == "echo ACME! 42"


def test_macros_are_per_dag():
    with DAG("one", user_defined_macros={"who": "one"}) as one:
        a = BashOperator(task_id="b", bash_command="{{ who }}")
    with DAG("two", user_defined_macros={"who": "two"}) as two:
        b = BashOperator(task_id="b", bash_command="{{ who }}")
    with DAG("three") as three:
        c = BashOperator(task_id="b", bash_command="{{ who }}")
    assert render(a, context_for(one))[0].bash_command == "one"
    assert render(b, context_for(two))[0].bash_command == "two"
    with pytest.raises(TemplateError):
        render(c, context_for(three))


def test_a_template_compiles_once_per_dag_and_renders_each_context():
    with DAG("cached") as the_dag:
        op = BashOperator(task_id="b", bash_command="echo {{ params.n }}")
    env = jinja_env(the_dag)
    assert compiled(env, "echo {{ params.n }}") is compiled(env, "echo {{ params.n }}")
    first = render(op, {**context_for(the_dag), "params": {"n": 1}})[0]
    second = render(op, {**context_for(the_dag), "params": {"n": 2}})[0]
    assert (first.bash_command, second.bash_command) == ("echo 1", "echo 2")
    with DAG("other") as other:
        pass
    assert compiled(jinja_env(other), "echo {{ params.n }}") is not compiled(env, "echo {{ params.n }}")


def test_builtin_date_filters():
    with DAG("f") as the_dag:
        op = BashOperator(
            task_id="b",
            bash_command="{{ logical_date | ds }} {{ logical_date | ds_nodash }} "
            "{{ logical_date | ts_nodash }}",
        )
    assert render(op, context_for(the_dag))[0].bash_command == "2024-03-05 20240305 20240305T060708"


def test_sh_template_file_is_loaded_relative_to_the_dag_file(tmp_path: Path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "report.sh").write_text(
        'echo "day {{ ds }}"\necho "table {{ params.table }}"\n'
    )
    with DAG("files", params={"table": "events"}) as the_dag:
        op = BashOperator(task_id="report", bash_command="scripts/report.sh")
    the_dag.fileloc = str(tmp_path / "my_dag.py")
    copy, _ = render(op, context_for(the_dag))
    assert copy.bash_command == 'echo "day 2024-03-05"\necho "table events"\n'
    assert op.bash_command == "scripts/report.sh"
    context = {k: v for k, v in context_for(the_dag).items() if k != "ti"}
    assert asyncio.run(copy.execute(context)) == "table events"


def test_template_searchpath_is_used(tmp_path: Path):
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "common.bash").write_text("echo {{ ds_nodash }}")
    with DAG("files", template_searchpath=str(shared)) as the_dag:
        op = BashOperator(task_id="b", bash_command="common.bash")
    the_dag.fileloc = str(tmp_path / "elsewhere" / "dag.py")
    assert render(op, context_for(the_dag))[0].bash_command == "echo 20240305"


def test_missing_template_file_is_a_template_error(tmp_path: Path):
    with DAG("files") as the_dag:
        op = BashOperator(task_id="b", bash_command="missing.sh")
    the_dag.fileloc = str(tmp_path / "dag.py")
    with pytest.raises(TemplateError, match="missing.sh"):
        render(op, context_for(the_dag))
