"""SSH transport figures: RPC round trip over a real sshd vs the local socket; fleet status of 20 agents.

Run: .venv/bin/python tests/bench/bench_ssh.py  (needs /usr/sbin/sshd; runs as root on a test box)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mldeck.tui.cli.hosts_cmd import fleet_status  # noqa: E402
from mldeck.tui.fleet import Fleet  # noqa: E402
from mldeck.tui.hosts import Host  # noqa: E402
from tests.conftest import AgentProc, start_agent  # noqa: E402
from tests.ssh.conftest import ClientHome, make_client_home, pin, start_sshd  # noqa: E402

CALLS = 1000
AGENTS = 20
DOWN = 5
TIMEOUT_S = 2.0
HELD: list[socket.socket] = []
"""The black holes' listening sockets and the connections they accepted: kept open until the end."""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


async def round_trips(fleet: Fleet, name: str) -> list[float]:
    client = await fleet.client(name)
    for _ in range(50):
        await client.call("host.info")
    out = []
    for _ in range(CALLS):
        t = time.perf_counter()
        await client.call("host.info")
        out.append((time.perf_counter() - t) * 1000)
    return out


def blackhole() -> int:
    """A port that accepts TCP and never speaks SSH (the worst kind of down host)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    HELD.append(srv)
    threading.Thread(target=lambda: HELD.extend(iter(lambda: srv.accept()[0], None)), daemon=True).start()
    return srv.getsockname()[1]


@dataclass
class SshFleet:
    """Agents behind one real sshd, named as a hosts file would, and the SSH options that trust it."""

    hosts: dict[str, Host | None]
    options: dict[str, object]
    agents: list[AgentProc]
    client: ClientHome
    client_pub: str


@contextlib.contextmanager
def ssh_fleet(root: Path, agents: int = AGENTS) -> Iterator[SshFleet]:
    """sshd up, `agents` agents started, the sshd pinned in the client's known_hosts; all stopped after."""
    client, pub = make_client_home(root / "laptop")
    sshd = start_sshd(root / "sshd", pub)
    started: list[AgentProc] = []
    try:
        pin(client, sshd)
        started = [start_agent(root / f"agent{i}", timeout=120) for i in range(agents)]
        target = f"ssh://root@127.0.0.1:{sshd.port}"
        hosts: dict[str, Host | None] = {
            f"h{i:02d}": Host(target=target, home=str(a.home), python=sys.executable)
            for i, a in enumerate(started)
        }
        yield SshFleet(hosts, client.ssh_options(), started, client, pub)
    finally:
        for a in started:
            a.stop()
        sshd.stop()


async def timed_status(hosts: dict[str, Host | None], options: dict[str, object]) -> tuple[float, float, int]:
    """Cold (connect + status) and warm (links up) wall time, and how many hosts were up."""
    async with Fleet(hosts, ssh_options=options) as fleet:
        t = time.perf_counter()
        rows = await fleet_status(fleet, TIMEOUT_S)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        rows = await fleet_status(fleet, TIMEOUT_S)
        warm = time.perf_counter() - t
    return cold, warm, sum(r["up"] for r in rows)


def fleet_status_figures(root: Path, agents: int = AGENTS) -> tuple[float, float, int]:
    """`hosts status` to `agents` agents behind one sshd: cold and warm seconds, and the hosts up."""
    with ssh_fleet(root, agents) as fleet:
        return asyncio.run(timed_status(fleet.hosts, fleet.options))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ssh-") as tmp, ssh_fleet(Path(tmp)) as fleet:
        bridge_sshd = start_sshd(Path(tmp) / "sshd-bridge", fleet.client_pub, streamlocal=False)
        try:
            pin(fleet.client, bridge_sshd)
            report(fleet, bridge_sshd.port)
        finally:
            bridge_sshd.stop()


def report(fleet: SshFleet, bridge_port: int) -> None:
    """Round trips on each path to the first agent, then the fleet's status, all up and some hanging."""
    home = fleet.agents[0].home
    rtt_hosts = {
        "local": None, "ssh": fleet.hosts["h00"],
        "bridge": Host(target=f"ssh://root@127.0.0.1:{bridge_port}", home=str(home), python=sys.executable),
    }

    async def rtts() -> dict[str, list[float]]:
        async with Fleet(rtt_hosts, local_home=home, ssh_options=fleet.options) as links:
            return {n: await round_trips(links, n) for n in rtt_hosts}

    lat = asyncio.run(rtts())
    local = statistics.median(lat["local"])
    print(f"## RPC round trip (host.info, {CALLS} sequential calls, one agent)\n")
    print("| path | p50 ms | p95 ms | ratio p50 vs local | added ms per call (p50) |")
    print("| --- | --- | --- | --- | --- |")
    for name, label in (("local", "local UNIX socket"), ("ssh", "SSH direct-streamlocal (sshd)"),
                        ("bridge", "SSH exec bridge (sshd, forwarding off)")):
        p50 = statistics.median(lat[name])
        p95 = pct(lat[name], 95)
        print(f"| {label} | {p50:.3f} | {p95:.3f} | {p50 / local:.1f}x | {p50 - local:+.3f} |")

    down = {f"down{i}": Host(target=f"ssh://root@127.0.0.1:{blackhole()}") for i in range(DOWN)}
    up_cold, up_warm, n_up = asyncio.run(timed_status(fleet.hosts, fleet.options))
    some_cold, some_warm, n_some = asyncio.run(timed_status(
        {**dict(list(fleet.hosts.items())[: AGENTS - DOWN]), **down}, fleet.options))
    print(f"\n## `hosts status` fan-out, {AGENTS} agents behind one sshd "
          f"(timeout {TIMEOUT_S:g} s per host)\n")
    print("| fleet | hosts up | cold (SSH connect + status) s | warm (links up) s | target |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| {AGENTS} up | {n_up}/{AGENTS} | {up_cold:.2f} | {up_warm:.3f} | < 1 s |")
    print(f"| {AGENTS - DOWN} up + {DOWN} hanging | {n_some}/{AGENTS} | {some_cold:.2f} "
          f"| {some_warm:.3f} | < 1 s + {TIMEOUT_S:g} s |")


if __name__ == "__main__":
    main()
