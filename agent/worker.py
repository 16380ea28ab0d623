"""A long-lived child process of the agent, `python -m MODULE ARGS`, for work that needs torch (the agent
never imports it): started on first use, it imports torch once and answers one JSON line per request,
one request at a time (the explainer, the model verifier).

A worker that exits on its own (crashed, killed) is counted in `agent status` under its task name and
started anew for the next request; the request it was answering gets one error naming its last stderr
line. A request past the timeout kills it the same way. Idle for idle_s, it is asked to exit, and the
memory is given back.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

from mldeck.agent.child import end_child
from mldeck.agent.tasks import Tasks
from mldeck.core.errors import Invalid

IDLE_S = 600.0
STDERR_LINES = 20
ANSWER_LIMIT = 1 << 30  # bytes of one answer line (every row of 32 sampled requests, with their features)
STOP_S = 5.0


class ChildWorker:
    """One long-lived child process, `python -m` and `command` (`process` names it in messages, `task`
    counts its failures), started when first needed and again after it died."""

    def __init__(self, command: Sequence[str], process: str, task: str, tasks: Tasks, timeout_s: float,
                 idle_s: float = IDLE_S) -> None:
        self.command = list(command)
        self.process = process
        self.task = task
        self.tasks = tasks
        self.timeout_s = timeout_s
        self.idle_s = idle_s
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._asked_to_exit: set[int] = set()  # pids this side ended: not a crash when they go
        self._one = asyncio.Lock()
        self._idle: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[Any] | None = None

    async def ask(self, request: dict[str, Any], what: str) -> dict[str, Any]:
        """Send one request and return its answer line; Invalid when the worker died, broke the protocol or
        ran past the timeout (it is then gone, and the next request starts a new one)."""
        async with self._one:
            if self._idle is not None:
                self._idle.cancel()
            proc = await self._running()
            try:
                return await asyncio.wait_for(self._exchange(proc, request), self.timeout_s)
            except ConnectionError:
                await self._reaped(proc)
                raise Invalid(f"{what} failed: {self._exit(proc)}") from None
            except TimeoutError:
                raise self._ended(proc, f"{what} took over {self.timeout_s:.0f}s; stopped") from None
            except ValueError as exc:
                raise self._ended(proc, f"{what} failed: unreadable answer ({exc})") from None
            finally:
                self._idle = asyncio.get_running_loop().call_later(self.idle_s, self._close_idle)

    async def _exchange(self, proc: asyncio.subprocess.Process, request: dict[str, Any]) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        await proc.stdin.drain()
        line = await proc.stdout.readline()
        if not line.endswith(b"\n"):
            raise ConnectionResetError(f"{self.process} ended without an answer")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def _running(self) -> asyncio.subprocess.Process:
        """The live worker, or a new one when there is none (first use, idle exit, crash)."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            if not proc.stdin.is_closing() and proc.pid not in self._asked_to_exit:
                return proc
            await proc.wait()  # asked to exit (idle, or stopped): on its way out
        self.stderr.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", *self.command, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=ANSWER_LIMIT,
        )
        self._watcher = self.tasks.spawn(self._watch(self.proc), self.task)
        return self.proc

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Keep the worker's last stderr lines; count its exit as a failure unless this side asked for it."""
        assert proc.stderr is not None
        async for raw in proc.stderr:
            self.stderr.append(raw.decode(errors="replace").rstrip())
        await proc.wait()
        if proc.pid in self._asked_to_exit:
            self._asked_to_exit.discard(proc.pid)
        else:
            raise Invalid(f"{self.process} exited: {self._exit(proc)}")

    async def _reaped(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for a worker that died to be reaped and its stderr read (killed if it lingers)."""
        assert self._watcher is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._watcher), STOP_S)
        except TimeoutError:
            self._ended(proc, f"{self.process} closed its answers but did not exit")
            await proc.wait()

    def _ended(self, proc: asyncio.subprocess.Process, why: str) -> Invalid:
        """Kill a worker that is stuck or broke the protocol; its failure, counted in `agent status`."""
        if proc.returncode is None:
            self._asked_to_exit.add(proc.pid)
            proc.kill()
        failure = Invalid(why)
        self.tasks.failed(self.task, failure)
        return failure

    def _exit(self, proc: asyncio.subprocess.Process) -> str:
        """How the worker ended, with its last stderr line (the user's model may be why)."""
        last = next((line for line in reversed(self.stderr) if line.strip()), "no output")
        return f"exit code {proc.returncode}: {last}"

    def _close_idle(self) -> None:
        """Ask an idle worker to exit: it reads the end of stdin and returns."""
        proc = self.proc
        if proc is not None and proc.returncode is None and not self._one.locked() and proc.stdin is not None:
            self._asked_to_exit.add(proc.pid)
            proc.stdin.close()

    async def stop(self) -> None:
        """End the worker with the agent: it holds nothing to save (SIGTERM, then SIGKILL past STOP_S)."""
        if self._idle is not None:
            self._idle.cancel()
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        self._asked_to_exit.add(proc.pid)
        await end_child(proc, STOP_S)
