"""The Fleet against a real sshd: stream-local, exec-bridge fallback, host-key checks."""

from __future__ import annotations

import asyncio
import sys

import pytest

from mldeck.tui.fleet import Fleet, HostDown
from mldeck.tui.hosts import Host
from tests.ssh.conftest import keygen

pytestmark = pytest.mark.timeout(60)


def host(sshd, agent, **kw) -> Host:
    return Host(target=f"ssh://root@127.0.0.1:{sshd.port}", home=str(agent.home), python=sys.executable, **kw)


async def _calls(fleet: Fleet, name: str) -> dict:
    hello = await fleet.call(name, "hello", client="test")
    runs = await fleet.call(name, "runs.list")
    rows = await fleet.call(name, "query", sql="select count(*) as n from runs")
    sub = fleet.subscribe(name, "host.metrics")
    event = await asyncio.wait_for(anext(aiter(sub)), 10)
    await sub.close()
    return {"hello": hello, "runs": runs, "rows": rows, "event": event}


def test_calls_over_direct_streamlocal(ssh_world, remote_agent):
    client, open_sshd, _ = ssh_world

    async def go():
        async with Fleet({"gpu1": host(open_sshd, remote_agent)}, ssh_options=client.ssh_options()) as fleet:
            got = await _calls(fleet, "gpu1")
            assert fleet.state("gpu1") == "up"
            assert fleet.status("gpu1").mode == "streamlocal"
            return got

    got = asyncio.run(go())
    assert got["hello"]["host"]["home"] == str(remote_agent.home)
    assert [r["name"] for r in got["runs"]] == ["over-ssh"]
    assert got["rows"]["rows"] == [[1]]
    assert len(got["event"]["gpus"]) == 2


def test_exec_bridge_when_sshd_refuses_streamlocal(ssh_world, remote_agent):
    client, _, closed_sshd = ssh_world

    async def go():
        hosts = {"gpu2": host(closed_sshd, remote_agent)}
        async with Fleet(hosts, ssh_options=client.ssh_options()) as fleet:
            got = await _calls(fleet, "gpu2")
            assert fleet.status("gpu2").mode == "bridge"
            return got

    got = asyncio.run(go())
    assert [r["name"] for r in got["runs"]] == ["over-ssh"]
    assert len(got["event"]["gpus"]) == 2


def test_no_agent_there_says_so(ssh_world, tmp_path):
    client, open_sshd, _ = ssh_world
    entry = Host(target=f"ssh://root@127.0.0.1:{open_sshd.port}", home=str(tmp_path / "none"),
                 python=sys.executable)

    async def go():
        async with Fleet({"empty": entry}, ssh_options=client.ssh_options()) as fleet:
            with pytest.raises(HostDown) as err:
                await fleet.call("empty", "hello")
            return err.value.why, fleet.state("empty")

    why, state = asyncio.run(go())
    assert "no agent at" in why and "mldeck agent start" in why
    assert state.startswith("down: mldeck bridge: no agent at")
    assert "mldeck agent start --host empty" in state


def _refused(sshd, agent, options: dict) -> str:
    async def go():
        async with Fleet({"h": host(sshd, agent)}, ssh_options=options) as fleet:
            with pytest.raises(HostDown) as err:
                await fleet.call("h", "hello")
            assert fleet.state("h").startswith("down: ")
            return err.value.why

    return asyncio.run(go())


def test_unknown_host_key_is_refused(ssh_world, remote_agent, tmp_path):
    client, open_sshd, _ = ssh_world
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    why = _refused(open_sshd, remote_agent, {**client.ssh_options(), "known_hosts": str(empty)})
    assert "host key is unknown" in why and "ssh-keyscan -p" in why and str(empty) in why


def test_changed_host_key_is_refused(ssh_world, remote_agent, tmp_path):
    client, open_sshd, _ = ssh_world
    other = keygen(tmp_path / "other").split()
    changed = tmp_path / "known_hosts"
    changed.write_text(f"[127.0.0.1]:{open_sshd.port} {other[0]} {other[1]}\n")
    why = _refused(open_sshd, remote_agent, {**client.ssh_options(), "known_hosts": str(changed)})
    assert "host key CHANGED" in why and f"ssh-keygen -R '[127.0.0.1]:{open_sshd.port}'" in why


def test_host_key_checking_cannot_be_switched_off(ssh_world, remote_agent):
    client, open_sshd, _ = ssh_world
    why = _refused(open_sshd, remote_agent, {**client.ssh_options(), "known_hosts": None})
    assert "cannot be turned off" in why
