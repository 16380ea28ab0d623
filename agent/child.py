"""How the agent ends a child process it owns (the explainer, the model verifier, the model server)."""

from __future__ import annotations

import asyncio


async def end_child(proc: asyncio.subprocess.Process, grace_s: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited within grace_s; returns once it is reaped."""
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), grace_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
