"""The agent's config (`agent.toml` in its home), TOML validated by msgspec.

Every section has defaults, so no file is needed; a wrong key or type is one clear error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import msgspec

from mldeck.core.rules import check_alias, parse_direction, parse_rule


class Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A config table: unknown keys are typos, and are reported as such."""


class AgentSection(Section):
    collector_interval_s: float = 1.0
    simulate_gpus: int = 0
    history_days: float = 7.0


class ServingSection(Section):
    """The model server (agent/serving): where it listens and how it batches (Triton's knobs)."""

    # not the server's
    AGENT_ONLY: ClassVar[frozenset[str]] = frozenset({"autostart", "keep_segments", "explain_sample"})

    host: str = "127.0.0.1"
    port: int = 8700
    max_batch_size: int = 64
    max_queue_delay_ms: float = 1.0
    max_body_bytes: int = 16 * 1024 * 1024
    autostart: bool = True
    device: str = "auto"
    log_queue: int = 20_000
    segment_bytes: int = 64 * 1024 * 1024
    keep_segments: int = 8
    # who may do what: feedback always needs the token (serving.token in the home); inference and
    # reads need it too when require_token is set, which a non-loopback host requires
    require_token: bool = False
    # slow and hostile clients: a request's headers, then its body, must arrive within these; an idle
    # keep-alive connection is closed after idle_timeout_s; past max_connections the longest-idle go
    header_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    body_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    max_connections: Annotated[int, msgspec.Meta(ge=16)] = 8192
    max_id_chars: Annotated[int, msgspec.Meta(ge=1, le=65_536)] = 256
    max_feedback_bytes: Annotated[int, msgspec.Meta(ge=64)] = 64 * 1024
    feedback_ids: Annotated[int, msgspec.Meta(ge=1)] = 1_000_000
    # the share of logged requests the agent explains in the background (Integrated Gradients, kept in
    # `explanations`), never on the request path; 0 explains none, 1 every one
    explain_sample: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0

    def __post_init__(self) -> None:
        if self.keep_segments < 0:
            raise ValueError("keep_segments is how many log segments per model to keep; 0 keeps all")

    def for_server(self) -> dict[str, object]:
        """The keys the model server acts on: what it reports, and what an agent compares to adopt it."""
        return {k: v for k, v in msgspec.to_builtins(self).items() if k not in self.AGENT_ONLY}


class GateSection(Section):
    """What a version must show before it may take an alias (see core.registry.evaluate_gate)."""

    metrics: list[str] = msgspec.field(default_factory=list)
    no_worse_than_current: str | None = None
    require_alias_first: str | None = None
    no_open_drift_alert: bool = False

    def __post_init__(self) -> None:
        for rule in self.metrics:
            parse_rule(rule)
        if self.no_worse_than_current is not None:
            parse_direction(self.no_worse_than_current)
        if self.require_alias_first is not None:
            check_alias(self.require_alias_first)


class RegistrySection(Section):
    """`[registry.gates.MODEL.ALIAS]` tables; MODEL `*` applies to models without their own."""

    gates: dict[str, dict[str, GateSection]] = msgspec.field(default_factory=dict)


class JobsSection(Section):
    """The job runner: how long a stopped job may take to checkpoint, and how many CPU jobs at once.

    backend "slurm" hands jobs to Slurm (agent/slurm.py) with the sbatch options below; their run
    folders go under shared_dir, which the compute nodes must see at the same path."""

    SLURM_ONLY: ClassVar[tuple[str, ...]] = ("partition", "account", "qos", "time", "sbatch", "shared_dir")
    MLDECK_SBATCH: ClassVar[tuple[str, ...]] = (  # sbatch options mldeck sets itself to track the job
        "--output", "-o", "--error", "-e", "--open-mode", "--chdir", "-D", "--parsable", "--wrap",
        "--array", "-a", "--test-only",
    )

    grace_s: float = 30.0
    poll_interval_s: float = 0.5
    max_cpu_jobs: int = 0
    requeue_preempted: bool = True
    cost_update_s: float = 2.0
    rdzv_host: str | None = None
    backend: Literal["local", "slurm"] = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    sbatch: list[str] = msgspec.field(default_factory=list)
    shared_dir: str | None = None

    def __post_init__(self) -> None:
        if self.backend != "slurm":
            given = [k for k in self.SLURM_ONLY if getattr(self, k)]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise ValueError(f"{', '.join(given)} {verb} only with backend = \"slurm\"")
        own = [o for o in self.sbatch if o.split("=", 1)[0] in self.MLDECK_SBATCH]
        if own:
            raise ValueError(f"sbatch option {own[0]!r} is set by mldeck itself (it tracks the job by them)")
        if self.shared_dir is not None and not Path(self.shared_dir).expanduser().is_absolute():
            raise ValueError(f"shared_dir must be an absolute path, got {self.shared_dir!r}")


class CostSection(Section):
    """Prices (USD per hour); unset ones come from core.cost's defaults by GPU model."""

    gpu_price_per_hour: float | None = None
    spot: bool = False
    spot_price_per_hour: float | None = None
    cpu_core_price_per_hour: float | None = None
    prices: dict[str, float] = msgspec.field(default_factory=dict)



class ColumnOverride(Section):
    """One column's drift test and/or threshold instead of the default (see core.drift)."""

    method: str | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.method is not None:
            from mldeck.core.drift import STATISTICS

            if self.method not in STATISTICS:
                raise ValueError(f"drift method {self.method!r} is not one of {sorted(STATISTICS)}")


class ModelPolicy(Section):
    """`[monitor.models.NAME]` (NAME `*` for every model): what drift is, and what to do about it."""

    drift_share: float = 0.5
    drift_windows: int = 3
    accuracy_floor: float | None = None
    min_labels: int = 20
    metric: str = "val_acc"
    outputs: bool = True
    retrain: str | None = None
    rollback: bool = False
    rollback_margin: float = 0.02
    columns: dict[str, ColumnOverride] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.drift_share <= 1:
            raise ValueError(f"drift_share is a share of columns in (0, 1], got {self.drift_share}")
        if self.drift_windows < 0 or self.min_labels < 1:
            raise ValueError("drift_windows must be 0 (never alert) or more, and min_labels at least 1")


class MonitorSection(Section):
    """The drift monitor: tumbling windows (`5m`, `30s`, `500rows`) of each model's production traffic."""

    enabled: bool = True
    window: str = "5m"
    interval_s: float = 5.0
    grace_s: float = 2.0
    min_rows: int = 30
    models: dict[str, ModelPolicy] = msgspec.field(default_factory=dict)
    # a column's type instead of Evidently's rule (integer with at most 10 values → categorical …)
    column_types: dict[str, Literal["categorical", "numeric"]] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        from mldeck.core.monitor import parse_window

        parse_window(self.window)
        if self.interval_s <= 0 or self.grace_s < 0 or self.min_rows < 1:
            raise ValueError("interval_s must be positive, grace_s 0 or more, min_rows at least 1")

    def policy(self, name: str) -> ModelPolicy:
        """The model's own policy, else `*`'s, else the defaults."""
        return self.models.get(name) or self.models.get("*") or ModelPolicy()


class QuerySection(Section):
    """`mldeck query`: how long one read-only SQL query may run before the agent cancels it."""

    time_limit_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class SocketSection(Section):
    """The control socket: how many clients at once (never over half the file-handle limit), and how long
    one without subscriptions may go without sending a whole request before it is closed."""

    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1024
    idle_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0


class StoreSection(Section):
    """The store: how many daily backups the agent keeps in backups/ (0: none), and DuckDB's memory limit
    and threads (None: one per core), set when the agent opens it, so its memory stays bounded."""

    backups: Annotated[int, msgspec.Meta(ge=0)] = 7
    memory_limit: Annotated[str, msgspec.Meta(pattern=r"^\d+(\.\d+)?\s*([KMGT]i?B|B|%)$")] = "512MB"
    threads: Annotated[int, msgspec.Meta(ge=1, le=1024)] | None = None

    def duckdb_settings(self) -> dict[str, object]:
        """What DuckDB is opened with (its configuration is locked once the store is open)."""
        settings: dict[str, object] = {"memory_limit": self.memory_limit}
        if self.threads is not None:
            settings["threads"] = self.threads
        return settings


class AgentConfig(Section):
    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    registry: RegistrySection = msgspec.field(default_factory=RegistrySection)
    serving: ServingSection = msgspec.field(default_factory=ServingSection)
    jobs: JobsSection = msgspec.field(default_factory=JobsSection)
    cost: CostSection = msgspec.field(default_factory=CostSection)
    monitor: MonitorSection = msgspec.field(default_factory=MonitorSection)
    query: QuerySection = msgspec.field(default_factory=QuerySection)
    socket: SocketSection = msgspec.field(default_factory=SocketSection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)


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
