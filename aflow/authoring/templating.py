"""Jinja rendering of an operator's `template_fields` with the run's context."""

from __future__ import annotations

import functools
import os
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.nativetypes
import jinja2.sandbox

from aflow.authoring.xcom_arg import ParamRef, XComArg
from aflow.exceptions import TemplateError

if TYPE_CHECKING:
    from aflow.authoring.baseoperator import BaseOperator
    from aflow.authoring.dag import DAG


class _NativeSandbox(jinja2.sandbox.SandboxedEnvironment, jinja2.nativetypes.NativeEnvironment):
    pass


_FILTERS = {
    "ds": lambda d: d.strftime("%Y-%m-%d"),
    "ds_nodash": lambda d: d.strftime("%Y%m%d"),
    "ts": lambda d: d.isoformat(),
    "ts_nodash": lambda d: d.strftime("%Y%m%dT%H%M%S"),
}


def jinja_env(dag: DAG | None) -> jinja2.Environment:
    """The DAG's Jinja environment (cached on the DAG): sandboxed, undefined names are errors."""
    if dag is not None and getattr(dag, "_jinja_env", None) is not None:
        return dag._jinja_env  # type: ignore[no-any-return,attr-defined]
    searchpath: list[str] = []
    if dag is not None:
        if dag.fileloc:
            searchpath.append(os.path.dirname(os.path.abspath(dag.fileloc)))
        searchpath.extend(dag.template_searchpath)
    native = bool(dag and dag.render_template_as_native_obj)
    cls = _NativeSandbox if native else jinja2.sandbox.SandboxedEnvironment
    env = cls(
        loader=jinja2.FileSystemLoader(searchpath) if searchpath else None,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        cache_size=400,
    )
    env.filters.update(_FILTERS)
    if dag is not None:
        env.filters.update(dag.user_defined_filters)
        env.globals.update(dag.user_defined_macros)
        dag._jinja_env = env  # type: ignore[attr-defined]
    return env


def compiled(env: jinja2.Environment, source: str) -> jinja2.Template:
    """`env.from_string(source)`, cached per environment: Jinja caches only templates
    it loads by name, and compiling costs about a millisecond, far more than rendering.
    The same templated field is rendered by every run (and again when a deferred task
    resumes), so a DAG's templates compile once per process."""
    cache = env.__dict__.get("_aflow_compiled")
    if cache is None:
        cache = env.__dict__["_aflow_compiled"] = functools.lru_cache(maxsize=_COMPILED_CACHE_SIZE)(
            env.from_string
        )
    return cache(source)  # type: ignore[no-any-return]


_COMPILED_CACHE_SIZE = 4096


def render_value(
    value: Any, context: dict[str, Any], env: jinja2.Environment, template_ext: tuple[str, ...] = ()
) -> Any:
    """Render strings inside `value` (recursing into lists, tuples and dicts).

    XComArgs and DAG param references are resolved to their values, which are not rendered.
    """
    if isinstance(value, XComArg | ParamRef):
        return value.resolve(context)
    if isinstance(value, str):
        if "{{" not in value and "{%" not in value and not (
            template_ext and value.endswith(template_ext)
        ):
            return value
        if template_ext and value.endswith(template_ext) and env.loader is not None:
            template = env.get_template(value)
        else:
            template = compiled(env, value)
        return template.render(**context)
    if isinstance(value, list):
        return [render_value(v, context, env, template_ext) for v in value]
    if isinstance(value, tuple):
        return tuple(render_value(v, context, env, template_ext) for v in value)
    if isinstance(value, dict):
        return {k: render_value(v, context, env, template_ext) for k, v in value.items()}
    return value


def value_has_template(value: Any, template_ext: tuple[str, ...]) -> bool:
    if isinstance(value, (XComArg, ParamRef)):  # noqa: UP038 - a tuple is faster here
        return True
    if isinstance(value, str):
        return "{{" in value or "{%" in value or bool(template_ext and value.endswith(template_ext))
    if isinstance(value, list | tuple | set):
        return any(value_has_template(v, template_ext) for v in value)
    if isinstance(value, dict):
        return any(value_has_template(v, template_ext) for v in value.values())
    return False


def has_templates(task: BaseOperator) -> bool:
    """Whether any templated field holds something to render (checked once per task)."""
    ext = tuple(task.template_ext)
    return any(value_has_template(getattr(task, f, None), ext) for f in task.template_fields)


def render_template_fields(task: BaseOperator, context: dict[str, Any]) -> dict[str, Any]:
    """Render each templated field of `task` in place (task is a per-try copy).

    Returns the rendered values by field name; a failure raises TemplateError naming the field.
    """
    if not getattr(task, "_aflow_templated", True):
        return {f: getattr(task, f, None) for f in task.template_fields}
    env = jinja_env(task.dag)
    rendered: dict[str, Any] = {}
    ext = tuple(task.template_ext)
    for field in task.template_fields:
        raw = getattr(task, field, None)
        try:
            value = render_value(raw, context, env, ext)
        except jinja2.TemplateError as exc:
            raise TemplateError(
                f"task {task.task_id!r}: cannot render templated field {field!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        setattr(task, field, value)
        rendered[field] = value
    return rendered


@functools.lru_cache(maxsize=1024)
def date_context(logical_date: datetime) -> dict[str, str]:
    """ds, ts and friends for a logical date (cached: every task of a run asks for it).
    Callers must not mutate the result."""
    return {
        "ds": logical_date.strftime("%Y-%m-%d"),
        "ds_nodash": logical_date.strftime("%Y%m%d"),
        "ts": logical_date.isoformat(),
        "ts_nodash": logical_date.strftime("%Y%m%dT%H%M%S"),
        "ts_nodash_with_tz": logical_date.strftime("%Y%m%dT%H%M%S%z"),
    }
