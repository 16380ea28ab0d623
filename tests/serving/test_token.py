"""Who may do what: feedback always needs the token; require_token covers inference and reads too."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from mldeck.core.servingtoken import bearer, serving_token, token_path
from tests.conftest import REPO, agent_env
from tests.serving.conftest import FEATURES, ServerProc, infer_body, start_server

pytestmark = pytest.mark.timeout(180)


def call(server: ServerProc, path: str, body: Any = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, Any]]:
    data = None if body is None else msgspec.json.encode(body)
    req = urllib.request.Request(server.url + path, data=data, headers=headers or {},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, msgspec.json.decode(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, msgspec.json.decode(exc.read())


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Iterator[ServerProc]:
    """A server with require_token set in the home's agent.toml, as the agent would configure it."""
    home = tmp_path_factory.mktemp("token-home")
    (home / "agent.toml").write_text("[serving]\nrequire_token = true\n")
    proc = start_server(home)
    proc.manifest({"mlp": {"aliases": {"production": (1, model_dirs["v1"])}}})
    proc.wait_serving("mlp", {"production": 1})
    yield proc
    proc.stop()


def test_the_token_file_is_owner_only(locked: ServerProc) -> None:
    path = token_path(locked.home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_uid == os.getuid()
    assert serving_token(locked.home) == path.read_text().strip() and len(serving_token(locked.home)) >= 32


def test_feedback_needs_the_token(locked: ServerProc) -> None:
    auth = locked.auth()
    rows = np.ones((1, FEATURES), np.float32)
    assert call(locked, "/v2/models/mlp/infer", infer_body(rows, "tok-1"), auth)[0] == 200
    feedback = {"request_id": "tok-1", "label": 1}
    status, reply = call(locked, "/v2/models/mlp/feedback", feedback)
    assert status == 401 and "Authorization: Bearer" in reply["error"], reply
    status, reply = call(locked, "/v2/models/mlp/feedback", feedback, bearer("x" * 43))
    assert status == 401 and "not this server's" in reply["error"], reply
    status, reply = call(locked, "/v2/models/mlp/feedback", feedback, auth)
    assert status == 200 and reply["accepted"], reply


def test_require_token_covers_inference_and_reads_not_health(locked: ServerProc) -> None:
    rows = np.ones((1, FEATURES), np.float32)
    routes = (("/v2/models/mlp/infer", infer_body(rows)), ("/v2/models/mlp", None),
              ("/v2/models/mlp/config", None), ("/v2/models/mlp/stats", None), ("/mldeck/stats", None),
              ("/v2/repository/index", {}))
    for path, body in routes:
        status, reply = call(locked, path, body)
        assert status == 401, (path, reply)
        assert call(locked, path, body, locked.auth())[0] == 200, path
    req = urllib.request.Request(locked.url + "/metrics")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    assert refused.value.code == 401
    assert call(locked, "/v2/health/live") == (200, {"live": True})
    assert call(locked, "/v2/health/ready") == (200, {"ready": True})


def server_exit(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A model server that must refuse to start: it exits before it listens."""
    command = [sys.executable, "-m", "mldeck.agent.serving", "--home", str(home), "--port", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, env=agent_env(home), cwd=REPO, timeout=60)


def test_a_host_beyond_loopback_needs_require_token(tmp_path: Path) -> None:
    done = server_exit(tmp_path, "--host", "0.0.0.0")
    assert done.returncode == 2, done.stderr
    assert "host = '0.0.0.0' is reachable beyond this machine: set require_token = true" in done.stderr


def test_a_token_others_can_read_is_refused(tmp_path: Path) -> None:
    serving_token(tmp_path)
    token_path(tmp_path).chmod(0o644)
    done = server_exit(tmp_path)
    assert done.returncode == 2 and "chmod 600" in done.stderr, done.stderr
