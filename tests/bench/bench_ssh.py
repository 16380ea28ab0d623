"""SSH transport figures: RPC round trip over a real sshd vs the local socket; fleet status of 20 agents.

Run: .venv/bin/python tests/bench/bench_ssh.py  (needs /usr/sbin/sshd; runs as root on a test box)
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mldeck.tui.cli.hosts_cmd import fleet_status  # noqa: E402
from mldeck.tui.fleet import Fleet  # noqa: E402
from mldeck.tui.hosts import Host  # noqa: E402
from tests.conftest import start_agent  # noqa: E402
from tests.ssh.conftest import make_client_home, pin, start_sshd  # noqa: E402

CALLS = 1000
AGENTS = 20
DOWN = 5
TIMEOUT_S = 2.0


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
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: srv.accept()[0], None)), daemon=True).start()
    blackhole.keep.append(srv)  # type: ignore[attr-defined]
    return srv.getsockname()[1]


blackhole.keep = []  # type: ignore[attr-defined]


async def timed_status(hosts: dict[str, Host | None], options: dict) -> tuple[float, float, int]:
    """Cold (connect + status) and warm (links up) wall time, and how many hosts were up."""
    async with Fleet(hosts, ssh_options=options) as fleet:
        t = time.perf_counter()
        rows = await fleet_status(fleet, TIMEOUT_S)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        rows = await fleet_status(fleet, TIMEOUT_S)
        warm = time.perf_counter() - t
    return cold, warm, sum(r["up"] for r in rows)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    client, pub = make_client_home(root / "laptop")
    sshd = start_sshd(root / "sshd", pub)
    bridge_sshd = start_sshd(root / "sshd-bridge", pub, streamlocal=False)
    pin(client, sshd, bridge_sshd)
    options = client.ssh_options()
    agents = []
    try:
        agents = [start_agent(root / f"agent{i}", timeout=120) for i in range(AGENTS)]
        target = f"ssh://root@127.0.0.1:{sshd.port}"
        hosts: dict[str, Host | None] = {
            f"h{i:02d}": Host(target=target, home=str(a.home), python=sys.executable)
            for i, a in enumerate(agents)
        }
        rtt_hosts = {
            "local": None, "ssh": hosts["h00"],
            "bridge": Host(target=f"ssh://root@127.0.0.1:{bridge_sshd.port}", home=str(agents[0].home),
                           python=sys.executable),
        }

        async def rtts() -> dict[str, list[float]]:
            async with Fleet(rtt_hosts, local_home=agents[0].home, ssh_options=options) as fleet:
                return {n: await round_trips(fleet, n) for n in rtt_hosts}

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
        up_cold, up_warm, n_up = asyncio.run(timed_status(hosts, options))
        some_cold, some_warm, n_some = asyncio.run(timed_status(
            {**dict(list(hosts.items())[: AGENTS - DOWN]), **down}, options))
        print(f"\n## `hosts status` fan-out, {AGENTS} agents behind one sshd "
              f"(timeout {TIMEOUT_S:g} s per host)\n")
        print("| fleet | hosts up | cold (SSH connect + status) s | warm (links up) s | target |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| {AGENTS} up | {n_up}/{AGENTS} | {up_cold:.2f} | {up_warm:.3f} | < 1 s |")
        print(f"| {AGENTS - DOWN} up + {DOWN} hanging | {n_some}/{AGENTS} | {some_cold:.2f} "
              f"| {some_warm:.3f} | < 1 s + {TIMEOUT_S:g} s |")
    finally:
        for a in agents:
            a.stop()
        sshd.stop()
        bridge_sshd.stop()


if __name__ == "__main__":
    main()
