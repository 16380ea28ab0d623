"""Cut the SSH link mid-subscription: the Fleet says "reconnecting", then resumes by itself."""

from __future__ import annotations

import asyncio
import sys

import asyncssh
import pytest

from mldeck.tui.fleet import Fleet, HostDown
from mldeck.tui.hosts import Host

pytestmark = pytest.mark.timeout(60)


class Relay(asyncssh.SSHServer):
    """An SSH server that relays direct-streamlocal channels to the requested socket, and can be cut."""

    def __init__(self, live: list[asyncssh.SSHServerConnection]) -> None:
        self.live = live

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.live.append(conn)

    def unix_connection_requested(self, dest_path: str) -> bool:
        return True


async def _serve(port: int, key: asyncssh.SSHKey, authorized: str, live: list) -> asyncssh.SSHAcceptor:
    return await asyncssh.create_server(lambda: Relay(live), "127.0.0.1", port, server_host_keys=[key],
                                        authorized_client_keys=authorized)


async def _next(it, timeout: float = 10):
    return await asyncio.wait_for(anext(it), timeout)


def test_subscription_survives_a_cut_link(ssh_world, remote_agent, tmp_path):
    client, _, _ = ssh_world
    key = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "known_hosts"
    authorized = str(client.ssh / "id_ed25519.pub")

    async def go():
        live: list[asyncssh.SSHServerConnection] = []
        server = await _serve(0, key, authorized, live)
        port = server.sockets[0].getsockname()[1]
        known.write_text(f"[127.0.0.1]:{port} {key.export_public_key().decode().strip()}\n")
        host = Host(target=f"ssh://root@127.0.0.1:{port}", home=str(remote_agent.home), python=sys.executable)
        options = {**client.ssh_options(), "known_hosts": str(known)}
        async with Fleet({"cut": host}, ssh_options=options) as fleet:
            sub = fleet.subscribe("cut", "host.metrics")
            events = aiter(sub)
            before = await _next(events)
            assert fleet.state("cut") == "up" and fleet.status("cut").mode == "streamlocal"
            # Cut: the server stops listening and drops the live connection.
            server.close()
            for conn in live:
                conn.abort()
            seen = set()
            for _ in range(200):
                seen.add(fleet.state("cut"))
                if "reconnecting" in seen:
                    break
                await asyncio.sleep(0.01)
            assert "reconnecting" in seen, seen
            with pytest.raises(HostDown) as err:
                await fleet.call("cut", "hello", timeout_s=1)
            assert "connection refused" in err.value.why or "no connection" in err.value.why
            assert fleet.state("cut") == "reconnecting"
            # The link comes back: the subscription resumes with no action from the caller.
            server = await _serve(port, key, authorized, live)
            after = await _next(events, 20)
            while after["ts"] <= before["ts"]:
                after = await _next(events)
            assert fleet.state("cut") == "up" and sub.resumed == 1
            assert (await fleet.call("cut", "hello"))["agent_version"]
            await sub.close()
        server.close()

    asyncio.run(go())
