"""A planned agent restart is not a serving outage: `mldeck agent stop` leaves the model server serving.

A probe loop sends an inference request at a fixed rate while the agent is stopped gracefully and started
again twice, through the CLI as a user does it: not one probe may fail, the server keeps its pid and the
promoted version, and the new agent adopts it. Only `agent stop --with-serving` ends it.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import AgentProc, rpc, start_agent, wait_for
from tests.serving.conftest import free_port
from tests.serving.test_adoption import BODY, Probe, serving

pytestmark = pytest.mark.timeout(300)


def served_version(url: str) -> str:
    req = urllib.request.Request(url + "/v2/models/tiny/infer", data=BODY, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["model_version"]


@pytest.mark.slow
def test_agent_stopped_and_started_twice_drops_no_request(tmp_path: Path) -> None:
    home = tmp_path / "home"
    agent: AgentProc = start_agent(home, config=f"[serving]\nport = {free_port()}\n")
    probe = None
    try:
        trained = agent.python("tests/registry/tiny_train.py", "tiny:0.9", "tiny:0.92")
        assert trained.returncode == 0, trained.stderr
        wait_for(lambda: len(rpc(home, "models.versions", {"name": "tiny"}).get("result") or []) == 2,
                 timeout=120, what="two registered versions")
        agent.cli("models", "promote", "tiny", "2", "--to", "production", "--yes", check=True)
        started = agent.cli("serve", "start", "--json", timeout=180, check=True).json()
        pid, url = started["pid"], started["url"]
        assert served_version(url) == "2"
        probe = Probe(url)
        probe.start()
        time.sleep(1.0)
        for _ in range(2):
            stopped = agent.cli("agent", "stop", check=True).out
            assert psutil.pid_exists(pid), stopped
            assert f"the model server (pid {pid}, {url}) keeps serving" in stopped, stopped
            time.sleep(0.5)
            agent.cli("agent", "start", check=True)
            wait_for(lambda: serving(home).get("running"), timeout=60, what="the server adopted")
            assert serving(home)["pid"] == pid, (home / "agent.log").read_text()[-3000:]
            time.sleep(1.5)
        probe.halt.set()
        probe.join(10)
        assert probe.failures == [], f"{len(probe.failures)} of {probe.sent} failed: {probe.failures[:5]}"
        assert probe.sent >= 100  # at PROBE_HZ while nothing is slow; under load, fewer but never a failure
        assert (home / "agent.log").read_text().count(f"adopted model server pid {pid}") == 2
        assert served_version(url) == "2"
        shown = agent.cli("agent", "status", check=True).out
        assert f"model server: pid {pid} on {url}, keeps serving" in shown, shown
        production = serving(home)["manifest"]["models"]["tiny"]["aliases"]["production"]
        assert production["version"] == 2
        ended = agent.cli("agent", "stop", "--with-serving", "--json", check=True).json()
        assert ended["stopped"] and ended["serving"] == {"running": False, "pid": pid, "url": url}
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if probe is not None:
            probe.halt.set()
        agent.cli("agent", "stop", "--with-serving")
        agent.stop()
