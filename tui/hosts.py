"""The laptop's hosts file: which SSH target each host name means, and where its agent lives there."""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

from mldeck.core.errors import Invalid
from mldeck.core.paths import BadName, check_name, config_dir

LOCAL = "local"
ALL = "all"  # every host at once, for the commands that list (`runs ls --host all`)
DEFAULT_PORT = 22


class HostsError(Invalid):
    """A hosts-file or target problem, phrased so a person can fix it."""


class Host(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One remote host: its SSH target and, optionally, its agent home and Python."""

    target: str
    home: str | None = None
    python: str | None = None
    timeout_s: float = 10.0


class HostsFile(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    hosts: dict[str, Host] = {}


class Target(msgspec.Struct, frozen=True):
    """user@host:port; user and port None mean 'as ~/.ssh/config or the defaults say'."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}{host}{port}"


def parse_target(text: str) -> Target:
    """`ssh://[user@]host[:port]` → Target, refusing anything else (paths, queries, shell tricks)."""
    if not text.startswith("ssh://"):
        raise HostsError(f"SSH target {text!r} must look like ssh://user@host[:port]")
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise HostsError(f"SSH target {text!r} has a bad port; use 1-65535") from None
    host = parts.hostname
    if not host or parts.path not in ("", "/") or parts.query or parts.fragment or parts.password:
        raise HostsError(f"SSH target {text!r} must look like ssh://user@host[:port], nothing more")
    if host.startswith("-") or (parts.username or "").startswith("-"):
        raise HostsError(f"SSH target {text!r}: a host or user may not start with '-'")
    return Target(host=host, user=parts.username or None, port=port)


def check_host_name(name: str) -> str:
    if name in (LOCAL, ALL) or name.startswith("ssh:"):
        raise HostsError(f"host name {name!r} is reserved; pick another")
    try:
        return check_name(name, "host name")
    except BadName as exc:
        raise HostsError(str(exc)) from None


def hosts_path() -> Path:
    return config_dir() / "hosts.toml"


def load_hosts(path: Path | None = None) -> dict[str, Host]:
    """All hosts of the file (none if it does not exist yet); a broken file is an error naming it."""
    path = path or hosts_path()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise HostsError(f"{path} is not valid TOML: {exc}") from None
    try:
        hosts = msgspec.convert(raw, HostsFile).hosts
    except msgspec.ValidationError as exc:
        raise HostsError(f"{path}: {exc}") from None
    for name, host in hosts.items():
        check_host_name(name)
        parse_target(host.target)
    return hosts


def _toml_string(value: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes).
    return msgspec.json.encode(value).decode()


def dump_hosts(hosts: dict[str, Host]) -> str:
    lines = ["# mldeck hosts: `mldeck hosts add|rm` edit this file", ""]
    for name in sorted(hosts):
        lines.append(f"[hosts.{name}]")
        for key, value in msgspec.structs.asdict(hosts[name]).items():
            if value is None:
                continue
            lines.append(f"{key} = {_toml_string(value) if isinstance(value, str) else value}")
        lines.append("")
    return "\n".join(lines)


def save_hosts(hosts: dict[str, Host], path: Path | None = None) -> None:
    """Write atomically (temp file + rename), so a crash never leaves half a hosts file."""
    path = path or hosts_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hosts-", suffix=".toml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dump_hosts(hosts))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_host(name: str, target: str, home: str | None = None, python: str | None = None,
             path: Path | None = None, replace: bool = False) -> Host:
    check_host_name(name)
    parse_target(target)
    for what, value in (("--home", home), ("--python", python)):
        if value is not None and (not value or "\n" in value or "\0" in value):
            raise HostsError(f"{what} must be a non-empty single-line path")
    hosts = load_hosts(path)
    if name in hosts and not replace:
        raise HostsError(f"host {name!r} exists already; `mldeck hosts rm {name}` first")
    hosts[name] = Host(target=target, home=home, python=python)
    save_hosts(hosts, path)
    return hosts[name]


def update_host(name: str, path: Path | None = None, **changes: str | None) -> Host:
    hosts = load_hosts(path)
    hosts[name] = msgspec.structs.replace(hosts[name], **changes)
    save_hosts(hosts, path)
    return hosts[name]


def remove_host(name: str, path: Path | None = None) -> None:
    hosts = load_hosts(path)
    if name not in hosts:
        raise HostsError(f"no host {name!r} in {path or hosts_path()}; `mldeck hosts ls` lists them")
    del hosts[name]
    save_hosts(hosts, path)


def resolve(spec: str | None, path: Path | None = None) -> tuple[str, Host | None]:
    """--host value → (display name, Host); None for the local agent."""
    if spec in (None, "", LOCAL):
        return LOCAL, None
    if spec == ALL:
        raise HostsError("--host all works where a command lists (`mldeck runs ls --host all`); "
                         "this one takes one host")
    if spec.startswith("ssh://"):
        parse_target(spec)
        return spec, Host(target=spec)
    hosts = load_hosts(path)
    if spec not in hosts:
        known = ", ".join(sorted(hosts)) or "none yet"
        raise HostsError(
            f"unknown host {spec!r} (known: {known}); add it with `mldeck hosts add {spec} ssh://user@host`"
        )
    return spec, hosts[spec]
