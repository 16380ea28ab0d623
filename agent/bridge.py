"""`python -m mldeck.agent bridge`: stdin/stdout to agent.sock where sshd forbids stream-local forwarding."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mldeck.core.paths import Layout


async def _pump(reader: asyncio.StreamReader, write: object) -> None:
    while data := await reader.read(65536):
        write(data)  # type: ignore[operator]


async def run_bridge(home: Path) -> int:
    sock = Layout(home).socket
    try:
        sock_reader, sock_writer = await asyncio.open_unix_connection(str(sock))
    except OSError as exc:
        print(f"mldeck bridge: no agent at {sock} ({exc}); start one with `mldeck agent start`",
              file=sys.stderr)
        return 2
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    out = sys.stdout.buffer

    def to_stdout(data: bytes) -> None:
        out.write(data)
        out.flush()

    upstream = asyncio.create_task(_pump(stdin, sock_writer.write))
    downstream = asyncio.create_task(_pump(sock_reader, to_stdout))
    await asyncio.wait({upstream, downstream}, return_when=asyncio.FIRST_COMPLETED)
    sock_writer.close()
    return 0
