"""Assets as users write them: URIs, identity, conditions built with & and |, lists,
outlets on tasks, and what a DAG records about them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aflow import DAG, Asset, AssetAll, AssetAny, AssetWatcher, EmptyOperator, task
from aflow.authoring.assets import condition_from_json
from aflow.exceptions import DagDefinitionError
from triggers.file import FileTrigger
from triggers.sql import SqlTrigger
from triggers.webhook import WebhookTrigger

A, B, C = Asset("s3://bucket/a"), Asset("file:///data/b.csv"), Asset("plain_name")


def test_identity_is_the_uri() -> None:
    assert Asset("s3://bucket/a", name="other", extra={"k": 1}) == A
    assert len({A, Asset("s3://bucket/a"), B}) == 2
    assert A != B


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("", "must not be empty"),
        ("s3://bucket /a", "whitespace"),
        ("3s://x", "scheme"),
        ("s3://", "nothing after"),
        (None, "must be a string"),
    ],
)
def test_invalid_uri_is_a_clear_error(uri: object, problem: str) -> None:
    with pytest.raises(DagDefinitionError, match=problem):
        Asset(uri)  # type: ignore[arg-type]


def test_and_or_build_nested_conditions() -> None:
    cond = A | (B & C)
    assert isinstance(cond, AssetAny)
    assert isinstance(cond.objects[1], AssetAll)
    assert cond.evaluate({A.uri})
    assert not cond.evaluate({B.uri})
    assert cond.evaluate({B.uri, C.uri})
    both = A & B
    assert not both.evaluate({A.uri}) and both.evaluate({A.uri, B.uri})
    assert cond.uris() == {A.uri, B.uri, C.uri}
    assert condition_from_json(cond.to_json()) == cond
    with pytest.raises(DagDefinitionError, match="cannot combine"):
        A & "s3://x"  # type: ignore[operator]


def test_schedule_list_means_all() -> None:
    dag = DAG("consumer", schedule=[A, B])
    assert dag.asset_condition == AssetAll(A, B)
    assert dag.schedule is None  # no timetable
    assert DAG("one", schedule=[A]).asset_condition == A
    with pytest.raises(DagDefinitionError, match="assets only"):
        DAG("bad", schedule=[A, "@daily"])
    with pytest.raises(DagDefinitionError, match="names no asset"):
        DAG("empty", schedule=[])


def test_structure_records_condition_outlets_and_watchers(tmp_path) -> None:
    landing = Asset(
        "file:///landing",
        watchers=[AssetWatcher("files", FileTrigger(str(tmp_path / "*.csv")))],
    )
    with DAG("consumer", schedule=landing | (A & B)) as dag:
        EmptyOperator(task_id="t", outlets=[C])
    s = dag.structure()
    assert s["asset_condition"] == {
        "any": [{"asset": "file:///landing"}, {"all": [{"asset": A.uri}, {"asset": B.uri}]}]
    }
    assert s["schedule"].startswith("assets: ")
    assert s["tasks"][0]["outlets"] == [C.uri]
    [watcher] = s["asset_watchers"]
    assert watcher["uri"] == "file:///landing" and watcher["name"] == "files"
    assert watcher["classpath"] == "triggers.file.FileTrigger"


def test_outlets_on_operators_and_taskflow() -> None:
    with DAG("producer", start_date=datetime(2024, 1, 1, tzinfo=UTC)) as dag:
        EmptyOperator(task_id="op", outlets=[A, A, B])

        @task(outlets=[C])
        def tf() -> None:
            return None

        tf()
    assert dag.get_task("op").outlets == [A, B]
    assert dag.get_task("tf").outlets == [C]
    with pytest.raises(DagDefinitionError, match="outlets must be Assets"):
        EmptyOperator(task_id="bad", outlets=[A | B])


def test_watcher_needs_a_trigger_and_a_name() -> None:
    with pytest.raises(DagDefinitionError, match="must be a triggers BaseTrigger"):
        AssetWatcher("w", object())
    with pytest.raises(DagDefinitionError, match="invalid AssetWatcher name"):
        AssetWatcher("", WebhookTrigger("k"))
    with pytest.raises(DagDefinitionError, match="two watchers"):
        Asset("x", watchers=[AssetWatcher("w", WebhookTrigger("k")), AssetWatcher("w", WebhookTrigger("j"))])


def test_builtin_triggers_move_past_each_event(tmp_path) -> None:
    file_trigger = FileTrigger(str(tmp_path / "*.csv"))
    nxt = file_trigger.next_watch({"path": "/x/a.csv"})
    assert isinstance(nxt, FileTrigger) and nxt.ignore == ("/x/a.csv",)
    assert nxt.serialize()[1]["ignore"] == ["/x/a.csv"]  # (stored as a JSON list)
    webhook = WebhookTrigger("orders").next_watch({"key": "orders", "payload": {}, "id": 7})
    assert isinstance(webhook, WebhookTrigger) and webhook.after_id == 7
    sql = SqlTrigger("SELECT 1", dsn="sqlite:///x.db").next_watch({"value": 1})
    assert isinstance(sql, SqlTrigger) and sql.after_true
    assert sql.serialize()[1]["after_true"] is True
    # their kwargs for sensors are unchanged
    assert WebhookTrigger("k").serialize()[1] == {"key": "k"}
    assert "ignore" not in file_trigger.serialize()[1]
