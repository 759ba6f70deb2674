"""DAG params: defaults a run's conf may override, with simple validation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from aflow.exceptions import InvalidConfError

_NO_DEFAULT = object()

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


class Param:
    """A DAG parameter: a default, and optionally a JSON-schema-like `type` and `enum`."""

    def __init__(
        self,
        default: Any = _NO_DEFAULT,
        *,
        type: str | list[str] | None = None,  # noqa: A002 - Airflow's name
        enum: list[Any] | None = None,
        description: str | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> None:
        types = [type] if isinstance(type, str) else list(type or [])
        for t in types:
            if t not in _JSON_TYPES:
                raise ValueError(f"unknown param type {t!r}; use one of {sorted(_JSON_TYPES)}")
        self.default = default
        self.types = types
        self.enum = enum
        self.description = description
        self.minimum = minimum
        self.maximum = maximum

    @property
    def required(self) -> bool:
        return self.default is _NO_DEFAULT

    def problems(self, name: str, value: Any) -> list[str]:
        out: list[str] = []
        if self.types:
            ok = False
            for t in self.types:
                py = _JSON_TYPES[t]
                if isinstance(value, bool) and t in ("integer", "number"):
                    continue
                if isinstance(value, py):
                    ok = True
                    break
            if not ok:
                out.append(f"param {name!r}: {value!r} is not of type {' or '.join(self.types)}")
                return out
        if self.enum is not None and value not in self.enum:
            out.append(f"param {name!r}: {value!r} is not one of {self.enum}")
        if isinstance(value, int | float) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                out.append(f"param {name!r}: {value!r} is less than the minimum {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                out.append(f"param {name!r}: {value!r} is more than the maximum {self.maximum}")
        return out

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"required": self.required}
        if not self.required:
            d["default"] = self.default
        if self.types:
            d["type"] = self.types
        if self.enum is not None:
            d["enum"] = self.enum
        if self.description:
            d["description"] = self.description
        return d


class ParamsDict(Mapping[str, Any]):
    """The DAG's params. Reading gives the plain default values."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params: dict[str, Param] = {
            k: v if isinstance(v, Param) else Param(v) for k, v in params.items()
        }

    def __getitem__(self, key: str) -> Any:
        p = self._params[key]
        return None if p.required else p.default

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def param(self, key: str) -> Param:
        return self._params[key]

    def describe(self) -> dict[str, Any]:
        return {k: p.describe() for k, p in self._params.items()}

    def resolve(self, conf: Mapping[str, Any] | None) -> dict[str, Any]:
        """Merge a run's conf over the defaults; raise InvalidConfError listing every problem.

        Keys of conf that are not params are allowed (Airflow passes them through
        `dag_run.conf`) and do not appear in the result.
        """
        conf = dict(conf or {})
        values: dict[str, Any] = {}
        problems: list[str] = []
        for name, p in self._params.items():
            if name in conf:
                value = conf[name]
            elif p.required:
                problems.append(f"param {name!r} is required")
                continue
            else:
                value = p.default
            problems.extend(p.problems(name, value))
            values[name] = value
        if problems:
            raise InvalidConfError("invalid conf: " + "; ".join(problems), problems)
        return values
