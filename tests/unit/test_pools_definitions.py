"""Pools and weights as written: task arguments checked at definition, effective
priority weights under each weight_rule, and the [pools] table of aflow.toml."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from aflow import DAG, EmptyOperator, WeightRule
from aflow.config import load_config
from aflow.exceptions import ConfigError, DagDefinitionError
from aflow.orchestrator import Orchestrator
from aflow.store.records import PoolRecord

START = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pool_slots": 0}, "pool_slots must be an integer >= 1, got 0"),
        ({"pool_slots": 1.5}, "pool_slots must be an integer >= 1"),
        ({"pool": "no spaces"}, "invalid pool 'no spaces'"),
        ({"pool": None}, "pool must be a pool's name, got None"),
        ({"priority_weight": "high"}, "priority_weight must be an integer"),
        ({"weight_rule": "sideways"}, "unknown weight_rule 'sideways'; use one of downstream"),
    ],
)
def test_bad_pool_and_weight_arguments_fail_the_definition(kwargs: dict, message: str) -> None:
    with DAG("bad", start_date=START), pytest.raises(DagDefinitionError, match=message):
        EmptyOperator(task_id="t", **kwargs)


def test_effective_weights_follow_each_rule_and_count_a_task_once() -> None:
    with DAG("w", start_date=START, default_args={"weight_rule": "upstream"}) as dag:
        a = EmptyOperator(task_id="a", priority_weight=2, weight_rule=WeightRule.DOWNSTREAM)
        b = EmptyOperator(task_id="b", priority_weight=3, weight_rule="downstream")
        c = EmptyOperator(task_id="c", priority_weight=5, weight_rule="downstream")
        d = EmptyOperator(task_id="d", priority_weight=7)  # upstream, from default_args
        e = EmptyOperator(task_id="e", priority_weight=11, weight_rule="absolute")
        a >> [b, c] >> d  # a diamond: d is below a once, not twice
        d >> e
    assert dag.priority_weights() == {
        "a": 2 + 3 + 5 + 7 + 11, "b": 3 + 7 + 11, "c": 5 + 7 + 11, "d": 7 + 2 + 3 + 5, "e": 11,
    }
    f = EmptyOperator(task_id="f", dag=dag)
    e >> f  # the DAG changed: weights are worked out again
    assert dag.priority_weights()["a"] == 2 + 3 + 5 + 7 + 11 + 1


def test_a_long_chain_gets_its_weights_quickly() -> None:
    with DAG("chain", start_date=START) as dag:
        ops = [EmptyOperator(task_id=f"t{i}") for i in range(5000)]
        for up, down in zip(ops, ops[1:], strict=False):
            up >> down
    weights = dag.priority_weights()
    assert weights["t0"] == 5000 and weights["t4999"] == 1


def write(home: Path, text: str) -> None:
    (home / "aflow.toml").write_text(text)


def test_pools_table_of_the_config_file(tmp_path: Path) -> None:
    write(tmp_path, '[core]\nparallelism = 8\n[pools]\netl = 4\n'
                    'api = { slots = -1, include_deferred = true, description = "partner" }\n')
    config = load_config(tmp_path, env={})
    assert config.pools == (PoolRecord("etl", 4), PoolRecord("api", -1, "partner", True))
    assert config.get("core.parallelism") == 8
    write(tmp_path, "[pools]\netl = true\n")
    with pytest.raises(ConfigError, match=r"\[pools\] etl: pool 'etl': slots must be an integer"):
        load_config(tmp_path, env={})
    write(tmp_path, "[pools]\netl = { slots = 1, max = 2 }\n")
    with pytest.raises(ConfigError, match=r"\[pools\] etl: unknown key\(s\) 'max'"):
        load_config(tmp_path, env={})
    write(tmp_path, "[poolz]\netl = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[poolz\].*pools"):
        load_config(tmp_path, env={})


def test_orchestrator_checks_its_pools_when_built() -> None:
    with pytest.raises(Exception, match="pools etl: pool 'etl': slots must be an integer"):
        Orchestrator(pools={"etl": -5})
