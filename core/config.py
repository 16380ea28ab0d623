"""The agent's config (`agent.toml` in its home), TOML validated by msgspec.

Every section has defaults, so no file is needed; a wrong key or type is one clear error.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A config table: unknown keys are typos, and are reported as such."""


class AgentSection(Section):
    collector_interval_s: float = 1.0
    simulate_gpus: int = 0
    history_days: float = 7.0


class ServingSection(Section):
    """The model server (agent/serving): where it listens and how it batches (Triton's knobs)."""

    host: str = "127.0.0.1"
    port: int = 8700
    max_batch_size: int = 64
    max_queue_delay_ms: float = 1.0
    max_body_bytes: int = 16 * 1024 * 1024
    autostart: bool = True
    device: str = "auto"
    log_queue: int = 20_000
    segment_bytes: int = 64 * 1024 * 1024


class AgentConfig(Section):
    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    serving: ServingSection = msgspec.field(default_factory=ServingSection)


class ConfigError(ValueError):
    """A config file that cannot be used, with the file named in the message."""


def load_config(path: Path) -> AgentConfig:
    """Read the file if there is one; MLDECK_SIMULATE_GPUS overrides for demos and tests."""
    config = AgentConfig()
    if path.exists():
        try:
            config = msgspec.toml.decode(path.read_bytes(), type=AgentConfig)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from None
    sim = os.environ.get("MLDECK_SIMULATE_GPUS")
    if sim:
        if not sim.isdigit():
            raise ConfigError(f"MLDECK_SIMULATE_GPUS must be a whole number, got {sim!r}")
        config.agent.simulate_gpus = int(sim)
    return config
