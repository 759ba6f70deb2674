"""aflow's settings: one list, one loader, one precedence.

Every setting has a section and a key (`core.parallelism`) and is read, first match wins, from

1. its command-line flag (`--parallelism 64`),
2. `AFLOW__SECTION__KEY` in the environment (`AFLOW__CORE__PARALLELISM=64`),
3. its older environment variable, kept as an alias (`AFLOW_PARALLELISM=64`),
4. the config file `$AFLOW_HOME/aflow.toml` (`[core]` / `parallelism = 64`),
5. its built-in default.

`AFLOW_HOME` itself comes from `--home` or the environment (the file lives in it).
The file may also hold a `[pools]` table (`etl = 4` or `etl = { slots = 4,
include_deferred = true, description = "..." }`): pools that `scheduler`, `standalone`,
`dags test` and `db init` write to the store when they start (`Config.pools`).
An empty environment variable counts as unset. A bad value, an unknown key or a
malformed file raises `ConfigError` naming the file or variable and the value.

The CLI is the only reader: it maps the result onto constructor arguments, so library
code never reads the environment (the Orchestrator takes plain arguments).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aflow.exceptions import ConfigError
from aflow.orchestrator import (
    DEFAULT_HOME,
    DEFAULT_PARALLELISM,
    DEFAULT_SHUTDOWN_GRACE_S,
    DEFAULT_TRIGGERER_CAPACITY,
)
from aflow.runtime.dag_processor import DEFAULT_PARSE_PROCESSES, DEFAULT_PARSE_TIMEOUT_S
from aflow.runtime.pools import parse_pools
from aflow.runtime.scheduler import (
    DEFAULT_LEASE_S,
    DEFAULT_ORPHAN_GRACE_S,
    DEFAULT_POLL_S,
    DEFAULT_SWEEP_S,
)
from aflow.store.records import PoolRecord

__all__ = [
    "CONFIG_FILE_NAME",
    "SETTINGS",
    "Config",
    "Setting",
    "Value",
    "load_config",
    "resolve_home",
]

CONFIG_FILE_NAME = "aflow.toml"
ENV_PREFIX = "AFLOW__"
POOLS_SECTION = "pools"
HOME_ENV = "AFLOW_HOME"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SQLITE_SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass(frozen=True)
class Setting:
    """One known setting. `kind` is int, float, bool, str or path; `default` None means
    "derived" (`default_text` says from what)."""

    section: str
    key: str
    kind: str
    default: Any
    help: str
    flag: str | None = None
    legacy_env: str | None = None
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    default_text: str | None = None
    secret: bool = False  # shown as *** by `aflow config list`

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"{ENV_PREFIX}{self.section.upper()}__{self.key.upper()}"

    @property
    def dest(self) -> str | None:
        """The argparse attribute of its flag."""
        return self.flag.lstrip("-").replace("-", "_") if self.flag else None


SETTINGS: tuple[Setting, ...] = (
    Setting("core", "dags_folder", "path", None, "folder of DAG files (relative paths in the "
            "file are relative to $AFLOW_HOME)", flag="--dags-folder",
            legacy_env="AFLOW_DAGS_FOLDER", default_text="$AFLOW_HOME/dags"),
    Setting("core", "store", "str", None, "store URL: sqlite:///path.db or postgresql://…",
            flag="--store", legacy_env="AFLOW_STORE", default_text="sqlite:///$AFLOW_HOME/aflow.db"),
    Setting("core", "parallelism", "int", DEFAULT_PARALLELISM,
            "most tries running at once in one process", flag="--parallelism",
            legacy_env="AFLOW_PARALLELISM", minimum=1),
    Setting("core", "shutdown_grace_seconds", "float", DEFAULT_SHUTDOWN_GRACE_S,
            "seconds running tasks get to finish on SIGTERM/Ctrl-C", flag="--grace",
            legacy_env="AFLOW_SHUTDOWN_GRACE", minimum=0),
    Setting("core", "sqlite_synchronous", "str", "NORMAL",
            "SQLite durability: NORMAL survives a process crash, FULL also a power loss",
            choices=SQLITE_SYNCHRONOUS_LEVELS),
    Setting("core", "fernet_key", "str", None,
            "key(s) that encrypt connection passwords and extras in the store (comma-separated:"
            " the first encrypts, all decrypt); make one with `aflow connections generate-key`",
            default_text="none: connection secrets cannot be stored", secret=True),
    Setting("scheduler", "lease_seconds", "float", DEFAULT_LEASE_S,
            "seconds a dead process keeps its runs before others adopt them", flag="--lease",
            legacy_env="AFLOW_LEASE_SECONDS", minimum=0.001),
    Setting("scheduler", "poll_seconds", "float", DEFAULT_POLL_S,
            "seconds between claim sweeps when the store has no cross-process notifications",
            minimum=0.001),
    Setting("scheduler", "sweep_seconds", "float", DEFAULT_SWEEP_S,
            "seconds between safety sweeps while PostgreSQL notifications wake the scheduler",
            flag="--sweep", legacy_env="AFLOW_SWEEP_SECONDS", minimum=0.001),
    Setting("scheduler", "orphan_grace_seconds", "float", DEFAULT_ORPHAN_GRACE_S,
            "seconds a run may wait for a DAG no scheduler loads before it fails",
            flag="--orphan-grace", legacy_env="AFLOW_ORPHAN_GRACE_SECONDS", minimum=0),
    Setting("scheduler", "hostname", "str", None,
            "this host's name in process records and task instances (every process)",
            flag="--hostname", legacy_env="AFLOW_HOSTNAME", default_text="the system's"),
    Setting("triggerer", "capacity", "int", DEFAULT_TRIGGERER_CAPACITY,
            "most triggers one process parks", flag="--capacity",
            legacy_env="AFLOW_TRIGGERER_CAPACITY", minimum=1),
    Setting("dag_processor", "parse_timeout_seconds", "float", DEFAULT_PARSE_TIMEOUT_S,
            "seconds one DAG file may take to parse before it becomes an import error",
            minimum=0.001),
    Setting("dag_processor", "parse_processes", "int", DEFAULT_PARSE_PROCESSES,
            "parser processes for the DAG folder", minimum=1,
            default_text="the CPUs less one, from 1 to 4"),
    Setting("dag_processor", "watch", "bool", True,
            "re-parse the DAG folder live when a file changes (false: load once at start)"),
    Setting("webserver", "host", "str", "127.0.0.1",
            "the address the web UI and REST API listen on (aflow webserver, standalone)",
            flag="--host"),
    Setting("webserver", "port", "int", 8080,
            "the port of the web UI and REST API (0: any free port)", flag="--port", minimum=0),
    Setting("logging", "level", "str", "WARNING",
            "what aflow's own log prints on stderr (-v means DEBUG)", choices=LOG_LEVELS),
    Setting("secrets", "backends", "str", None,
            "extra secrets backends, asked after the environment and before the store: "
            "import paths package.module:Class separated by commas", default_text="none"),
)

_BY_NAME = {s.name: s for s in SETTINGS}
_SECTIONS: dict[str, list[str]] = {}
for _s in SETTINGS:
    _SECTIONS.setdefault(_s.section, []).append(_s.key)


@dataclass(frozen=True)
class Value:
    """A setting's effective value and where it came from: `default`, the file's path,
    `env NAME` or `flag --name`."""

    setting: Setting
    value: Any
    source: str


@dataclass(frozen=True)
class Config:
    home: Path
    home_source: str
    file: Path
    values: Mapping[str, Value]
    pools: tuple[PoolRecord, ...] = ()  # the file's [pools] table

    def get(self, name: str) -> Any:
        """The effective value of `section.key` (or `home`)."""
        if name == "home":
            return self.home
        if name not in self.values:
            raise ConfigError(_unknown_name(name))
        return self.values[name].value

    def source(self, name: str) -> str:
        return self.home_source if name == "home" else self.values[name].source


def resolve_home(flag: str | None, env: Mapping[str, str]) -> tuple[Path, str]:
    if flag:
        return Path(flag).expanduser(), "flag --home"
    if env.get(HOME_ENV):
        return Path(env[HOME_ENV]).expanduser(), f"env {HOME_ENV}"
    return DEFAULT_HOME, "default"


def load_config(
    home: Path,
    *,
    env: Mapping[str, str],
    flags: Mapping[str, Any] | None = None,
    home_source: str = "default",
) -> Config:
    """Every setting's effective value. `flags` maps `section.key` to a value given on the
    command line (None: not given)."""
    flags = flags or {}
    file = home / CONFIG_FILE_NAME
    from_file, pool_specs = _read_file(file)
    pools = tuple(parse_pools(pool_specs, where=f"config file {file}: [{POOLS_SECTION}]",
                              error=ConfigError))
    from_env = _read_prefixed_env(env)
    values: dict[str, Value] = {}
    for s in SETTINGS:
        if flags.get(s.name) is not None:
            value, source = _check(s, flags[s.name], f"flag {s.flag}"), f"flag {s.flag}"
        elif s.name in from_env:
            value, source = _parse_text(s, from_env[s.name], s.env), f"env {s.env}"
        elif s.legacy_env and env.get(s.legacy_env):
            value = _parse_text(s, env[s.legacy_env], s.legacy_env)
            source = f"env {s.legacy_env}"
        elif s.name in from_file:
            where = f"{file}: [{s.section}] {s.key}"
            value, source = _check(s, from_file[s.name], where), str(file)
            if s.kind == "path":
                value = home / Path(value).expanduser()
        else:
            value, source = s.default, "default"
        if s.kind == "path" and value is not None:
            value = Path(value).expanduser()
        values[s.name] = Value(s, value, source)
    _fill_derived(values, home)
    return Config(home=home, home_source=home_source, file=file, values=values, pools=pools)


def _fill_derived(values: dict[str, Value], home: Path) -> None:
    store = values["core.store"]
    if store.value is None:
        values["core.store"] = Value(store.setting, f"sqlite:///{home / 'aflow.db'}", "default")
    folder = values["core.dags_folder"]
    if folder.value is None:
        values["core.dags_folder"] = Value(folder.setting, home / "dags", "default")


def _read_file(file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The file's settings by `section.key`, and its [pools] table."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {file}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    pools: dict[str, Any] = {}
    for section, table in data.items():
        if section not in _SECTIONS and section != POOLS_SECTION:
            raise ConfigError(
                f"config file {file}: unknown section [{section}]"
                f" (known sections: {', '.join([*_SECTIONS, POOLS_SECTION])})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"config file {file}: {section} must be a [{section}] table")
        if section == POOLS_SECTION:
            pools = table
            continue
        for key, value in table.items():
            if key not in _SECTIONS[section]:
                hint = (" (AFLOW_HOME is where the file lives: set it with --home or the environment)"
                        if key == "home" else "")
                raise ConfigError(
                    f"config file {file}: unknown key {key!r} in [{section}]{hint}"
                    f" (known keys: {', '.join(_SECTIONS[section])})"
                )
            out[f"{section}.{key}"] = value
    return out, pools


def _read_prefixed_env(env: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for var, text in env.items():
        if not var.startswith(ENV_PREFIX) or not text:
            continue
        section, sep, key = var[len(ENV_PREFIX):].lower().partition("__")
        name = f"{section}.{key}"
        if not sep or name not in _BY_NAME:
            raise ConfigError(f"{var}: unknown setting ({_unknown_name(name)})")
        out[name] = text
    return out


def _unknown_name(name: str) -> str:
    section = name.partition(".")[0]
    if section in _SECTIONS:
        keys = ", ".join(f"{section}.{k}" for k in _SECTIONS[section])
        return f"no setting {name!r}; known in [{section}]: {keys}"
    return f"no setting {name!r}; known sections: {', '.join(_SECTIONS)}"


def _parse_text(s: Setting, text: str, where: str) -> Any:
    """A value given as text (an environment variable)."""
    if s.kind == "bool":
        lowered = text.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise ConfigError(f"{where}={text}: not a boolean (true or false)")
        value: Any = lowered in _TRUE
    elif s.kind == "int":
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{where}={text}: not an integer") from None
    elif s.kind == "float":
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{where}={text}: not a number") from None
    else:
        value = text
    return _check(s, value, where)


def _check(s: Setting, value: Any, where: str) -> Any:
    """Type, range and choices of a value (from the file, a flag or parsed text)."""
    if s.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} = {value!r}: not a boolean (true or false)")
    elif s.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} = {value!r}: not an integer")
    elif s.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} = {value!r}: not a number")
        value = float(value)
    elif not isinstance(value, str) or not value:
        raise ConfigError(f"{where} = {value!r}: not a non-empty string")
    if s.minimum is not None and value < s.minimum:
        raise ConfigError(f"{where} = {value!r}: must be at least {s.minimum:g}")
    if s.choices is not None:
        value = value.upper()
        if value not in s.choices:
            raise ConfigError(f"{where} = {value!r}: must be one of {', '.join(s.choices)}")
    return value
