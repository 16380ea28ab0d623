"""Work that needs torch runs in a child process (the agent never imports torch) and answers one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from mldeck.core.errors import Invalid


async def ask_child(module: str, args: list[str], what: str, timeout_s: float,
                    stdin: bytes | None = None) -> dict[str, Any]:
    """Run `python -m module args` and return its last stdout line as JSON; Invalid past timeout_s or
    when it answered nothing readable (naming stderr's last line: the user's model may be why)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise Invalid(f"{what} took over {timeout_s:.0f}s; stopped") from None
    try:
        return json.loads(out.decode(errors="replace").strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise Invalid(f"{what} failed: {tail}") from None


async def end_child(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited within grace_s; returns once it is reaped."""
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
