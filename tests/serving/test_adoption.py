"""An agent crash is not a serving outage: the restarted agent adopts the model server it finds running.

A probe loop sends an inference request at a fixed rate while the agent is killed with SIGKILL and
started again, three times: not one probe may fail, and the server keeps its pid throughout.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import AgentProc, rpc, start_agent, wait_for
from tests.serving.conftest import free_port

pytestmark = pytest.mark.timeout(300)

PROBE_HZ = 50
BODY = json.dumps({"inputs": [{"name": "input__0", "datatype": "FP32", "shape": [1, 8],
                               "data": [0.5] * 8}]}).encode()


def serving(home: Path) -> dict[str, object]:
    return rpc(home, "serving.status").get("result") or {}


class Probe(threading.Thread):
    """Inference at PROBE_HZ on a fixed schedule; every failure is kept with when and why."""

    def __init__(self, url: str) -> None:
        super().__init__(name="probe", daemon=True)
        self.url = url + "/v2/models/tiny/infer"
        self.sent = 0
        self.failures: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.halt.is_set():
            try:
                req = urllib.request.Request(self.url, data=BODY, method="POST")
                with urllib.request.urlopen(req, timeout=5) as resp:
                    if resp.status != 200:
                        self.failures.append((time.monotonic() - start, f"status {resp.status}"))
            except (OSError, urllib.error.HTTPError) as exc:
                self.failures.append((time.monotonic() - start, repr(exc)))
            self.sent += 1
            time.sleep(max(0.0, start + self.sent / PROBE_HZ - time.monotonic()))


@pytest.mark.slow
def test_agent_killed_three_times_drops_no_request(tmp_path: Path) -> None:
    home = tmp_path / "home"
    agent: AgentProc = start_agent(home, config=f"[serving]\nport = {free_port()}\n")
    probe = None
    try:
        trained = agent.python("tests/registry/tiny_train.py", "tiny:0.9")
        assert trained.returncode == 0, trained.stderr
        wait_for(lambda: rpc(home, "models.versions", {"name": "tiny"}).get("result"), timeout=120,
                 what="a registered version")
        agent.cli("models", "promote", "tiny", "1", "--to", "production", "--yes", check=True)
        started = agent.cli("serve", "start", "--json", timeout=180, check=True).json()
        pid = started["pid"]
        probe = Probe(started["url"])
        probe.start()
        time.sleep(1.0)
        for _ in range(3):
            agent.kill(9)
            assert psutil.pid_exists(pid)
            time.sleep(0.5)
            agent = start_agent(home)
            wait_for(lambda: serving(home).get("running"), timeout=60, what="the server adopted")
            assert serving(home)["pid"] == pid, (home / "agent.log").read_text()[-3000:]  # adopted
            time.sleep(1.5)
        probe.halt.set()
        probe.join(10)
        assert probe.failures == [], f"{len(probe.failures)} of {probe.sent} failed: {probe.failures[:5]}"
        assert probe.sent >= 100  # at PROBE_HZ while nothing is slow; under load, fewer but never a failure
        assert (home / "agent.log").read_text().count("adopted model server pid") == 3
        assert serving(home)["wanted"]
    finally:
        if probe is not None:
            probe.halt.set()
        agent.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
