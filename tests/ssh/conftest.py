"""A real OpenSSH sshd on a loopback port, with keys the test generates and pins, and a client HOME."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mldeck.core.ports import free_port
from tests.conftest import REPO, AgentProc, CliResult, agent_env, start_agent

SSHD = "/usr/sbin/sshd"



def keygen(path: Path) -> str:
    """A new ed25519 key pair; returns the public key line."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Sshd:
    port: int
    host_pub: str
    proc: subprocess.Popen[bytes]
    log: Path

    def known_hosts_line(self) -> str:
        kind, key = self.host_pub.split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@dataclass
class ClientHome:
    """A laptop: HOME with ~/.ssh (key, known_hosts, config) and ~/.config/mldeck."""

    home: Path

    @property
    def ssh(self) -> Path:
        return self.home / ".ssh"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in agent_env(self.home / "local-agent").items() if k != "SSH_AUTH_SOCK"}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"), **extra)
        return env

    def cli(self, *args: str, timeout: float = 60) -> CliResult:
        done = subprocess.run([sys.executable, "-m", "mldeck.tui.cli", *args], capture_output=True, text=True,
                              env=self.env(), timeout=timeout, cwd=REPO)
        return CliResult(done.returncode, done.stdout, done.stderr)

    def ssh_options(self) -> dict[str, object]:
        return {"known_hosts": str(self.ssh / "known_hosts"), "client_keys": [str(self.ssh / "id_ed25519")],
                "config": [str(self.ssh / "config")], "agent_path": None}


def require_sshd() -> None:
    if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
        if os.environ.get("CI"):
            pytest.fail(f"{SSHD} is missing; .ci/run must install Debian's openssh-server")
        pytest.skip("install Debian's openssh-server")


def start_sshd(root: Path, authorized: str, streamlocal: bool = True) -> Sshd:
    require_sshd()
    root.mkdir(parents=True, exist_ok=True)
    host_pub = keygen(root / "host_key")
    (root / "authorized_keys").write_text(authorized + "\n")
    port = free_port()
    venv_site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"), None)
    config = root / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}", "PidFile none",
        "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        f"AuthorizedKeysFile {root / 'authorized_keys'}",
        # OpenSSH checks stream-local channels against the TCP forwarding permissions too.
        f"AllowStreamLocalForwarding {'yes' if streamlocal else 'no'}", "AllowTcpForwarding local",
        "X11Forwarding no", "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 100:30:200",
        "MaxSessions 100",
        # The "remote" is this machine: remote Pythons see the dependencies of the test venv.
        *([f"SetEnv PYTHONPATH={venv_site} MLDECK_SIMULATE_GPUS=2"] if venv_site else []),
        "",
    ]))
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    log = root / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"))  # noqa: SIM115 (the child keeps it)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return Sshd(port, host_pub, proc, log)
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"sshd did not listen: {log.read_text()}")


def make_client_home(root: Path) -> tuple[ClientHome, str]:
    client = ClientHome(root)
    client.ssh.mkdir(parents=True, mode=0o700)
    pub = keygen(client.ssh / "id_ed25519")
    (client.ssh / "known_hosts").write_text("")
    (client.ssh / "config").write_text("")
    return client, pub


def pin(client: ClientHome, *servers: Sshd) -> None:
    with open(client.ssh / "known_hosts", "a") as f:
        for server in servers:
            f.write(server.known_hosts_line())


@pytest.fixture(scope="session")
def ssh_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClientHome, Sshd, Sshd]]:
    """A client HOME and two sshds pinned in its known_hosts: one forwards stream-local, one refuses."""
    root = tmp_path_factory.mktemp("ssh")
    require_sshd()
    client, pub = make_client_home(root / "laptop")
    open_sshd = start_sshd(root / "sshd-open", pub, streamlocal=True)
    closed_sshd = start_sshd(root / "sshd-closed", pub, streamlocal=False)
    pin(client, open_sshd, closed_sshd)
    yield client, open_sshd, closed_sshd
    open_sshd.stop()
    closed_sshd.stop()


@pytest.fixture(scope="session")
def remote_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    """The agent the tests reach over SSH (2 simulated GPUs), with one finished run in its store."""
    agent = start_agent(tmp_path_factory.mktemp("remote") / "home",
                        config="[agent]\ncollector_interval_s = 0.2\n")
    script = ("from core import track\n"
              "r = track.init(name='over-ssh', experiment='fleet', params={'lr': 0.1})\n"
              "r.log({'loss': 0.5}, step=1)\nr.finish('succeeded')\n")
    done = agent.python("-c", script)
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 20
    while agent.cli("runs", "ls", "--json").json() == [] and time.monotonic() < deadline:
        time.sleep(0.1)
    yield agent
    agent.stop()
