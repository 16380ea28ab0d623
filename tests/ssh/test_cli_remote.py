"""The CLI with --host against a real sshd, as a user on a laptop would run it (HOME with ~/.ssh)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time

import pytest

from mldeck.tui.cli.hosts_cmd import fleet_status
from mldeck.tui.fleet import Fleet
from mldeck.tui.hosts import load_hosts

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def laptop(ssh_world, remote_agent):
    """The client HOME with host gpu1 added through the CLI; hosts file removed afterwards."""
    client, open_sshd, _ = ssh_world
    done = client.cli("hosts", "add", "gpu1", f"ssh://root@127.0.0.1:{open_sshd.port}",
                      "--home", str(remote_agent.home), "--python", sys.executable)
    assert done.code == 0, done.err
    yield client, open_sshd
    (client.home / ".config" / "mldeck" / "hosts.toml").unlink(missing_ok=True)
    (client.ssh / "config").write_text("")


def test_hosts_file_through_the_cli(laptop):
    client, sshd = laptop
    listed = client.cli("hosts", "ls", "--json").json()
    assert listed == [{"name": "gpu1", "target": f"ssh://root@127.0.0.1:{sshd.port}",
                       "home": listed[0]["home"], "python": sys.executable, "timeout_s": 10.0}]
    again = client.cli("hosts", "add", "gpu1", "ssh://x@y")
    assert again.code == 1 and "exists already" in again.err
    for name, target, said in [("../up", "ssh://a@b", "not allowed"), ("local", "ssh://a@b", "reserved"),
                               ("all", "ssh://a@b", "reserved"),
                               ("ok", "http://a@b", "must look like ssh://"),
                               ("ok", "ssh://a@b:99999", "bad port"),
                               ("ok", "ssh://-oProxyCommand=x", "'-'")]:
        bad = client.cli("hosts", "add", name, target)
        assert bad.code == 1 and said in bad.err, (name, target, bad.err)
        assert bad.err.count("\n") == 1
    gone = client.cli("hosts", "rm", "nope")
    assert gone.code == 1 and "mldeck hosts ls" in gone.err
    unknown = client.cli("runs", "ls", "--host", "nope")
    assert unknown.code == 1 and "unknown host 'nope'" in unknown.err and "hosts add" in unknown.err
    assert client.cli("hosts", "rm", "gpu1").code == 0
    assert client.cli("hosts", "ls", "--json").json() == []


def test_runs_of_every_host_in_one_list(laptop, remote_agent):
    client, _ = laptop
    listed = client.cli("runs", "ls", "--host", "all", "--json")
    assert listed.code == 3, listed.err  # this laptop runs no agent of its own: said, and left out
    assert "local left out: no agent running" in listed.err
    runs = listed.json()
    assert [r["fleet_host"] for r in runs] == ["gpu1"] * len(runs) and "over-ssh" in [r["name"] for r in runs]
    table = client.cli("runs", "ls", "--host", "all").out
    assert table.splitlines()[0].split()[:2] == ["HOST", "RUN"] and "gpu1" in table
    other = client.cli("runs", "show", "x", "--host", "all")
    assert other.code == 1 and "this one takes one host" in other.err


def test_runs_and_query_with_host_match_local(laptop, remote_agent):
    client, sshd = laptop
    local_runs = remote_agent.cli("runs", "ls", "--json").json()
    remote_runs = client.cli("runs", "ls", "--host", "gpu1", "--json")
    assert remote_runs.code == 0, remote_runs.err
    assert remote_runs.json() == local_runs and local_runs
    sql = "select name, experiment from runs order by name"
    assert client.cli("query", sql, "--host", "gpu1", "--json").json() == \
        remote_agent.cli("query", sql, "--json").json() == [{"name": "over-ssh", "experiment": "fleet"}]
    shown = client.cli("runs", "show", local_runs[0]["run_id"], "--host", "gpu1")
    assert shown.code == 0 and "over-ssh" in shown.out
    # An ssh:// URL needs no hosts entry; a ~/.ssh/config alias supplies HostName, Port and User.
    alias = f"Host gpu-alias\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n"
    (client.ssh / "config").write_text(alias)
    by_alias = client.cli("runs", "ls", "--host", "ssh://gpu-alias", "--home", str(remote_agent.home),
                          "--json")
    assert by_alias.code == 0, by_alias.err
    assert by_alias.json() == local_runs


def _blackhole() -> tuple[socket.socket, int]:
    """A TCP port that accepts and then says nothing: a host that hangs."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(iter(lambda: srv.accept()[0], None)), daemon=True).start()
    return srv, srv.getsockname()[1]


def test_hosts_status_one_host_down_never_delays_the_others(laptop):
    client, _ = laptop
    hole, port = _blackhole()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused_port = s.getsockname()[1]
    assert client.cli("hosts", "add", "hangs", f"ssh://root@127.0.0.1:{port}").code == 0
    assert client.cli("hosts", "add", "gone", f"ssh://root@127.0.0.1:{refused_port}").code == 0
    done = client.cli("hosts", "status", "--no-local", "--timeout", "2", "--json")
    rows = {r["host"]: r for r in done.json()}
    assert done.code == 3
    assert rows["gpu1"]["up"] and rows["gpu1"]["transport"] == "streamlocal"
    assert rows["gpu1"]["agent_version"] and rows["gpu1"]["running_jobs"] == 0
    assert len(rows["gpu1"]["gpus"]) == 2 and rows["gpu1"]["gpus"][0]["mem_total"] > 0
    assert rows["gpu1"]["cost_per_hour"] is None or rows["gpu1"]["cost_per_hour"] >= 0
    assert not rows["hangs"]["up"] and "within 2s" in rows["hangs"]["why"]
    assert not rows["gone"]["up"] and "connection refused" in rows["gone"]["why"]
    table = client.cli("hosts", "status", "--no-local", "--timeout", "5", "gpu1", "gone")
    assert "gpu1" in table.out and "down: connection refused" in table.out

    hole2, port2 = _blackhole()
    assert client.cli("hosts", "add", "hangs2", f"ssh://root@127.0.0.1:{port2}").code == 0
    hosts = load_hosts(client.home / ".config" / "mldeck" / "hosts.toml")

    async def timed(names: list[str]) -> tuple[float, list]:
        async with Fleet({n: hosts[n] for n in names}, ssh_options=client.ssh_options()) as fleet:
            start = time.monotonic()
            rows = await fleet_status(fleet, 2.0)
            return time.monotonic() - start, rows

    alone, _ = asyncio.run(timed(["gpu1"]))
    elapsed, rows = asyncio.run(timed(["gpu1", "hangs", "hangs2", "gone"]))
    hole.close()
    hole2.close()
    assert [r["up"] for r in rows] == [True, False, False, False]
    # One timeout (or the healthy host's own time, if longer), never one per slow host.
    assert elapsed < max(2.0, alone) + 1.0, (elapsed, alone)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_install_start_status_stop_over_ssh(laptop, tmp_path):
    """A host with Python but no mldeck: install a wheel of this checkout into a venv, start, stop."""
    client, sshd = laptop
    rhome = tmp_path / "remote-home"
    target = f"ssh://root@127.0.0.1:{sshd.port}"
    assert client.cli("hosts", "add", "fresh", target, "--home", str(rhome)).code == 0
    down = client.cli("agent", "status", "--host", "fresh", "--json")
    assert down.code == 3 and down.json()["running"] is False
    base = sys._base_executable  # the host's Python; SetEnv in sshd_config lends it the test deps
    done = client.cli("agent", "install", "--host", "fresh", "--venv", str(tmp_path / "venv"),
                      "--base-python", base, "--no-deps", "--json", timeout=300)
    assert done.code == 0, done.err
    info = done.json()
    assert info["agent"].startswith(str(tmp_path / "venv")), info
    entry = load_hosts(client.home / ".config" / "mldeck" / "hosts.toml")["fresh"]
    assert entry.python == str(tmp_path / "venv" / "bin" / "python")
    started = client.cli("agent", "start", "--host", "fresh", "--json")
    assert started.code == 0, started.err
    pid = started.json()["pid"]
    try:
        assert started.json()["home"] == str(rhome) and not started.json()["already_running"]
        assert client.cli("agent", "start", "--host", "fresh", "--json").json()["already_running"]
        status = client.cli("agent", "status", "--host", "fresh")
        assert status.code == 0 and f"home: {rhome}" in status.out
        stopped = client.cli("agent", "stop", "--host", "fresh", timeout=180)
        assert stopped.code == 0 and "agent stopped on fresh" in stopped.out
        assert client.cli("agent", "status", "--host", "fresh").code == 3
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

