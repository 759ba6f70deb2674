"""The registry of scenarios. A scenario is an async function in its own module under
`benchmarks/scenarios/`, registered with `@scenario(...)`; every module there is imported
when the registry is first used, so adding a scenario means adding one file."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.harness import BenchContext, Outcome

ScenarioFn = Callable[["BenchContext"], Awaitable["Outcome"]]


@dataclass(frozen=True)
class Option:
    """A command-line option of one scenario (e.g. `--park-seconds` of `sensors`).

    The runner adds it to the parser (refusing it for other scenarios), checks `minimum`,
    hands the value to the scenario as `ctx.options[dest]` and records it in the JSON record
    under `dest` (so a record says how it was made)."""

    flag: str  # "--park-seconds"
    type: Callable[[str], Any]
    default: Any
    help: str
    minimum: float | None = None
    choices: tuple[Any, ...] | None = None
    shown_default: str | None = None  # how --help describes the default, if not its value

    @property
    def dest(self) -> str:
        """The record key and `ctx.options` key: the flag without dashes, `_` for `-`."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Scenario:
    name: str
    fn: ScenarioFn
    description: str
    default_n: int
    default_parallelism: int = 256
    # How many scheduler processes the scenario can run against one store; the runner refuses
    # `--schedulers` above this, so a multi-scheduler scenario declares it when it can.
    max_schedulers: int = 1
    # Store URL schemes the scenario can use ("sqlite", "postgresql").
    stores: tuple[str, ...] = ("sqlite", "postgresql")
    # Options of this scenario only, beyond those every scenario has.
    options: tuple[Option, ...] = ()


_SCENARIOS: dict[str, Scenario] = {}
_loaded = False


def scenario(
    name: str,
    *,
    description: str,
    default_n: int,
    default_parallelism: int = 256,
    max_schedulers: int = 1,
    stores: tuple[str, ...] = ("sqlite", "postgresql"),
    options: tuple[Option, ...] = (),
) -> Callable[[ScenarioFn], ScenarioFn]:
    """Register an async scenario function under `name`."""

    def register(fn: ScenarioFn) -> ScenarioFn:
        if name in _SCENARIOS and _SCENARIOS[name].fn is not fn:
            raise ValueError(f"benchmark scenario {name!r} is registered twice")
        _SCENARIOS[name] = Scenario(
            name=name,
            fn=fn,
            description=description,
            default_n=default_n,
            default_parallelism=default_parallelism,
            max_schedulers=max_schedulers,
            stores=stores,
            options=tuple(options),
        )
        return fn

    return register


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    import benchmarks.scenarios as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    _loaded = True


def all_scenarios() -> dict[str, Scenario]:
    _load_all()
    return dict(sorted(_SCENARIOS.items()))


def get(name: str) -> Scenario:
    scenarios = all_scenarios()
    try:
        return scenarios[name]
    except KeyError:
        known = ", ".join(scenarios) or "none"
        raise KeyError(f"unknown scenario {name!r} (known: {known})") from None
