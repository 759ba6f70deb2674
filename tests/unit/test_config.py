"""aflow/config.py: precedence, sources and clear errors, on real files in a fresh home."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from aflow.cli import build_parser
from aflow.config import CONFIG_FILE_NAME, SETTINGS, load_config, resolve_home
from aflow.exceptions import ConfigError
from aflow.orchestrator import DEFAULT_HOME
from tests.conftest import REPO


def write_file(home: Path, text: str) -> Path:
    path = home / CONFIG_FILE_NAME
    path.write_text(text)
    return path


def test_defaults_without_a_file(home: Path) -> None:
    config = load_config(home, env={})
    assert config.get("core.parallelism") == 32
    assert config.get("core.store") == f"sqlite:///{home / 'aflow.db'}"
    assert config.get("core.dags_folder") == home / "dags"
    assert config.get("scheduler.hostname") is None
    assert {v.source for v in config.values.values()} == {"default"}


@pytest.mark.parametrize(
    ("layers", "value", "source"),
    [
        ({"file"}, 2, "file"),
        ({"file", "legacy"}, 3, "env AFLOW_PARALLELISM"),
        ({"file", "legacy", "env"}, 4, "env AFLOW__CORE__PARALLELISM"),
        ({"file", "legacy", "env", "flag"}, 5, "flag --parallelism"),
        ({"flag"}, 5, "flag --parallelism"),
        ({"legacy", "env"}, 4, "env AFLOW__CORE__PARALLELISM"),
        (set(), 32, "default"),
    ],
)
def test_precedence_flag_env_legacy_file_default(
    home: Path, layers: set[str], value: int, source: str
) -> None:
    file = write_file(home, "[core]\nparallelism = 2\n") if "file" in layers else None
    env = {}
    if "legacy" in layers:
        env["AFLOW_PARALLELISM"] = "3"
    if "env" in layers:
        env["AFLOW__CORE__PARALLELISM"] = "4"
    flags = {"core.parallelism": 5 if "flag" in layers else None}
    config = load_config(home, env=env, flags=flags)
    assert config.get("core.parallelism") == value
    assert config.source("core.parallelism") == (str(file) if source == "file" else source)


def test_every_section_from_the_file(home: Path) -> None:
    file = write_file(home, """
[core]
dags_folder = "my_dags"            # relative to AFLOW_HOME
store = "sqlite:////tmp/elsewhere.db"
shutdown_grace_seconds = 5
sqlite_synchronous = "full"
[scheduler]
lease_seconds = 12.5
poll_seconds = 0.5
sweep_seconds = 2
orphan_grace_seconds = 60
hostname = "box-a"
[triggerer]
capacity = 10
[dag_processor]
parse_timeout_seconds = 3
parse_processes = 2
watch = false
[logging]
level = "info"
""")
    config = load_config(home, env={})
    assert config.get("core.dags_folder") == home / "my_dags"
    assert config.get("core.store") == "sqlite:////tmp/elsewhere.db"
    assert config.get("core.shutdown_grace_seconds") == 5.0
    assert config.get("core.sqlite_synchronous") == "FULL"
    assert config.get("scheduler.lease_seconds") == 12.5
    assert config.get("scheduler.sweep_seconds") == 2.0
    assert config.get("scheduler.hostname") == "box-a"
    assert config.get("triggerer.capacity") == 10
    assert config.get("logging.level") == "INFO"
    assert config.get("dag_processor.parse_timeout_seconds") == 3.0
    assert config.get("dag_processor.parse_processes") == 2
    assert config.get("dag_processor.watch") is False
    assert config.source("core.parallelism") == "default"
    assert config.source("triggerer.capacity") == str(file)


def test_empty_environment_variables_count_as_unset(home: Path) -> None:
    write_file(home, "[core]\nparallelism = 2\n")
    config = load_config(home, env={"AFLOW__CORE__PARALLELISM": "", "AFLOW_PARALLELISM": ""})
    assert config.get("core.parallelism") == 2


@pytest.mark.parametrize(("text", "value"), [("true", True), ("0", False), ("Off", False)])
def test_booleans_from_the_environment(home: Path, text: str, value: bool) -> None:
    config = load_config(home, env={"AFLOW__DAG_PROCESSOR__WATCH": text})
    assert config.get("dag_processor.watch") is value


def test_home_from_flag_env_or_default() -> None:
    assert resolve_home("/x", {"AFLOW_HOME": "/y"}) == (Path("/x"), "flag --home")
    assert resolve_home(None, {"AFLOW_HOME": "/y"}) == (Path("/y"), "env AFLOW_HOME")
    assert resolve_home(None, {}) == (DEFAULT_HOME, "default")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AFLOW__CORE__PARALLELISM": "abc"}, "AFLOW__CORE__PARALLELISM=abc: not an integer"),
        ({"AFLOW_LEASE_SECONDS": "soon"}, "AFLOW_LEASE_SECONDS=soon: not a number"),
        ({"AFLOW__CORE__PARALLELISM": "0"}, "AFLOW__CORE__PARALLELISM = 0: must be at least 1"),
        ({"AFLOW__LOGGING__LEVEL": "loud"}, "must be one of DEBUG, INFO, WARNING, ERROR"),
        ({"AFLOW__DAG_PROCESSOR__WATCH": "maybe"},
         "AFLOW__DAG_PROCESSOR__WATCH=maybe: not a boolean"),
        ({"AFLOW__CORE__PARALELISM": "4"}, "AFLOW__CORE__PARALELISM: unknown setting"),
        ({"AFLOW__NOPE__X": "4"}, "known sections: core, scheduler, triggerer, dag_processor, webserver, logging"),
    ],
)
def test_bad_environment_values(home: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(home, env=env)
    assert message in str(info.value)


def test_unknown_key_names_the_file_and_the_known_keys(home: Path) -> None:
    file = write_file(home, "[scheduler]\nlease = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(home, env={})
    text = str(info.value)
    assert str(file) in text
    assert "unknown key 'lease' in [scheduler]" in text
    assert "lease_seconds, poll_seconds, sweep_seconds, orphan_grace_seconds, hostname" in text


def test_unknown_section_and_home_in_the_file(home: Path) -> None:
    write_file(home, "[web]\nport = 8080\n")
    with pytest.raises(ConfigError, match=r"unknown section \[web\]"):
        load_config(home, env={})
    write_file(home, "[core]\nhome = '/elsewhere'\n")
    with pytest.raises(ConfigError, match="AFLOW_HOME is where the file lives"):
        load_config(home, env={})


def test_wrong_type_in_the_file(home: Path) -> None:
    file = write_file(home, '[core]\nparallelism = "64"\n')
    with pytest.raises(ConfigError) as info:
        load_config(home, env={})
    assert str(info.value) == f"{file}: [core] parallelism = '64': not an integer"


def test_toml_syntax_error_gives_the_line(home: Path) -> None:
    file = write_file(home, "[core]\nparallelism = 4\nstore = sqlite:///x.db\n")
    with pytest.raises(ConfigError) as info:
        load_config(home, env={})
    text = str(info.value)
    assert f"config file {file} is not valid TOML" in text
    assert "line 3" in text


def test_every_setting_is_complete_and_reachable() -> None:
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    flags = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:  # noqa: SLF001 - argparse has no public walker
            flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    for s in SETTINGS:
        assert s.help and s.env == f"AFLOW__{s.section.upper()}__{s.key.upper()}"
        assert s.default is not None or s.default_text, s.name
        if s.flag:
            assert s.flag in flags, s.flag


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    for s in SETTINGS:
        row = next((line for line in section.splitlines() if f"`{s.name}`" in line), None)
        assert row is not None, f"README's Configuration table lacks {s.name}"
        assert f"`{s.env}`" in row, s.name
        if s.legacy_env:
            assert f"`{s.legacy_env}`" in row, s.name
        if s.flag:
            assert f"`{s.flag}`" in row, s.name
    assert re.search(r"flag.*AFLOW__SECTION__KEY.*AFLOW_\*.*aflow\.toml.*default", section, re.S)
