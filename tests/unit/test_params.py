"""DAG params: defaults, validation of a run's conf, every problem reported at once."""

from __future__ import annotations

import json

import pytest

from aflow.authoring.dag import DAG
from aflow.authoring.params import Param, ParamsDict
from aflow.exceptions import AflowError, InvalidConfError


def problems_of(params: ParamsDict, conf: dict | None) -> list[str]:
    with pytest.raises(InvalidConfError) as info:
        params.resolve(conf)
    return info.value.problems


def test_plain_values_are_defaults():
    params = ParamsDict({"a": 1, "b": "x", "c": None})
    assert dict(params) == {"a": 1, "b": "x", "c": None}
    assert len(params) == 3
    assert params.resolve(None) == {"a": 1, "b": "x", "c": None}
    assert params.resolve({"a": 2}) == {"a": 2, "b": "x", "c": None}


def test_conf_overrides_defaults_and_unknown_keys_are_not_params():
    params = ParamsDict({"a": Param(1, type="integer")})
    assert params.resolve({"a": 5, "other": "x"}) == {"a": 5}


def test_dag_params_are_a_params_dict():
    the_dag = DAG("d", params={"n": Param(3, type="integer"), "s": "x"})
    assert isinstance(the_dag.params, ParamsDict)
    assert the_dag.params["n"] == 3
    assert the_dag.params["s"] == "x"
    assert the_dag.params.param("n").types == ["integer"]


@pytest.mark.parametrize(
    ("type_", "good", "bad"),
    [
        ("string", "x", 1),
        ("integer", 3, 3.5),
        ("integer", -1, "3"),
        ("integer", 0, True),
        ("number", 3.5, "3.5"),
        ("number", 3, False),
        ("boolean", False, 0),
        ("boolean", True, "true"),
        ("array", [1], "1"),
        ("array", (1,), {"a": 1}),
        ("object", {"a": 1}, [1]),
        ("null", None, 0),
    ],
)
def test_types(type_, good, bad):
    params = ParamsDict({"p": Param(good, type=type_)})
    assert params.resolve({"p": good}) == {"p": good}
    (problem,) = problems_of(params, {"p": bad})
    assert "'p'" in problem and type_ in problem and repr(bad) in problem


def test_a_list_of_types_accepts_any_of_them():
    params = ParamsDict({"p": Param(None, type=["integer", "null"])})
    assert params.resolve({}) == {"p": None}
    assert params.resolve({"p": 4}) == {"p": 4}
    (problem,) = problems_of(params, {"p": "4"})
    assert "integer or null" in problem


def test_unknown_type_name_is_rejected():
    with pytest.raises(ValueError, match="'int'"):
        Param(1, type="int")


def test_enum():
    params = ParamsDict({"env": Param("dev", enum=["dev", "prod"])})
    assert params.resolve({"env": "prod"}) == {"env": "prod"}
    (problem,) = problems_of(params, {"env": "qa"})
    assert "'qa'" in problem and "dev" in problem and "prod" in problem


@pytest.mark.parametrize(
    ("value", "ok"),
    [(1, True), (10, True), (5.5, True), (0, False), (0.99, False), (11, False), (10.01, False)],
)
def test_minimum_and_maximum_are_inclusive(value, ok):
    params = ParamsDict({"n": Param(5, type="number", minimum=1, maximum=10)})
    if ok:
        assert params.resolve({"n": value}) == {"n": value}
    else:
        (problem,) = problems_of(params, {"n": value})
        assert "'n'" in problem and repr(value) in problem


def test_minimum_problem_names_the_bound():
    params = ParamsDict({"n": Param(5, minimum=2, maximum=8)})
    assert "minimum 2" in problems_of(params, {"n": 1})[0]
    assert "maximum 8" in problems_of(params, {"n": 9})[0]


def test_a_param_without_default_is_required():
    p = Param(type="string")
    assert p.required is True
    assert Param(None).required is False
    params = ParamsDict({"name": p, "opt": 1})
    assert params["name"] is None
    assert params.resolve({"name": "x"}) == {"name": "x", "opt": 1}
    (problem,) = problems_of(params, {})
    assert "'name'" in problem and "required" in problem


def test_every_problem_is_listed():
    params = ParamsDict(
        {
            "name": Param(type="string"),
            "count": Param(1, type="integer", minimum=1),
            "env": Param("dev", enum=["dev", "prod"]),
            "ratio": Param(0.5, type="number", maximum=1),
            "ok": Param(True, type="boolean"),
        }
    )
    conf = {"count": 0, "env": "qa", "ratio": "half", "ok": False}
    with pytest.raises(InvalidConfError) as info:
        params.resolve(conf)
    problems = info.value.problems
    assert len(problems) == 4
    for name in ("name", "count", "env", "ratio"):
        assert sum(f"'{name}'" in p for p in problems) == 1, name
        assert f"'{name}'" in str(info.value)
    assert not any("'ok'" in p for p in problems)


def test_value_breaking_enum_and_bound_reports_both():
    params = ParamsDict({"n": Param(1, enum=[1, 2, 3], maximum=3)})
    problems = problems_of(params, {"n": 7})
    assert len(problems) == 2
    assert any("one of" in p for p in problems)
    assert any("maximum" in p for p in problems)


def test_an_invalid_default_is_reported_when_conf_does_not_replace_it():
    params = ParamsDict({"n": Param("five", type="integer")})
    assert "'n'" in problems_of(params, {})[0]
    assert params.resolve({"n": 5}) == {"n": 5}


def test_invalid_conf_error_is_an_aflow_error_with_problems():
    err = InvalidConfError("bad")
    assert isinstance(err, AflowError)
    assert err.problems == ["bad"]


def test_resolve_does_not_change_the_defaults():
    params = ParamsDict({"items": Param([1], type="array")})
    params.resolve({"items": [2, 3]})
    assert params["items"] == [1]


def test_describe_is_json():
    params = ParamsDict(
        {
            "name": Param(type="string", description="who"),
            "n": Param(3, type=["integer", "null"], enum=[1, 3]),
            "plain": "x",
        }
    )
    described = json.loads(json.dumps(params.describe()))
    assert described == {
        "name": {"required": True, "type": ["string"], "description": "who"},
        "n": {"required": False, "default": 3, "type": ["integer", "null"], "enum": [1, 3]},
        "plain": {"required": False, "default": "x"},
    }
