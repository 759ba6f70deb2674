"""BashOperator: runs a shell command as an async subprocess in its own process group."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from typing import Any

import anyio

from aflow.authoring.baseoperator import BaseOperator
from aflow.exceptions import AflowError, SkipTask

log = logging.getLogger("aflow.task.bash")

KILL_GRACE_S = 5.0


class BashCommandFailed(AflowError):
    pass


class BashOperator(BaseOperator):
    """Run `bash_command` with bash. A non-zero exit fails the task (exit 99 skips it);
    every output line goes to the task log and the last line of stdout is its XCom."""

    template_fields: Sequence[str] = ("bash_command", "env", "cwd")
    template_ext: Sequence[str] = (".sh", ".bash")
    ui_color = "#f0ede4"

    def __init__(
        self,
        *,
        bash_command: str,
        env: dict[str, str] | None = None,
        append_env: bool = False,
        cwd: str | None = None,
        skip_on_exit_code: int | Sequence[int] | None = 99,
        output_encoding: str = "utf-8",
        **kwargs: Any,
    ) -> None:
        self.bash_command = bash_command
        self.env = env
        self.append_env = append_env
        self.cwd = cwd
        if skip_on_exit_code is None:
            self.skip_on_exit_code: tuple[int, ...] = ()
        elif isinstance(skip_on_exit_code, int):
            self.skip_on_exit_code = (skip_on_exit_code,)
        else:
            self.skip_on_exit_code = tuple(skip_on_exit_code)
        self.output_encoding = output_encoding
        super().__init__(**kwargs)

    def build_env(self, context: dict[str, Any]) -> dict[str, str]:
        base = dict(os.environ) if (self.env is None or self.append_env) else {}
        if self.env:
            base.update({k: str(v) for k, v in self.env.items()})
        ti = context.get("ti")
        if ti is not None:
            base.update(
                {
                    "AFLOW_CTX_DAG_ID": ti.dag_id,
                    "AFLOW_CTX_TASK_ID": ti.task_id,
                    "AFLOW_CTX_RUN_ID": ti.run_id,
                    "AFLOW_CTX_TRY_NUMBER": str(ti.try_number),
                    "AFLOW_CTX_LOGICAL_DATE": str(context.get("ts", "")),
                }
            )
        return base

    async def execute(self, context: dict[str, Any]) -> str | None:
        if self.cwd is not None and not await anyio.Path(self.cwd).is_dir():
            raise BashCommandFailed(f"cwd {self.cwd!r} is not a directory")
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            self.bash_command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self.build_env(context),
            cwd=self.cwd,
            start_new_session=True,
        )
        log.info("running command: %s (pid %d)", self.bash_command, proc.pid)
        last_line = ""
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode(self.output_encoding, errors="replace").rstrip("\n")
                log.info("%s", line)
                last_line = line
            rc = await proc.wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await kill_process_group(proc)
            raise
        if rc in self.skip_on_exit_code:
            raise SkipTask(f"bash command exited with {rc}")
        if rc != 0:
            raise BashCommandFailed(f"bash command failed: exit code {rc}")
        return last_line if self.do_xcom_push else None


async def kill_process_group(proc: asyncio.subprocess.Process, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after `grace` seconds."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with anyio.move_on_after(grace):
        await proc.wait()
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    with anyio.move_on_after(grace):
        await proc.wait()
