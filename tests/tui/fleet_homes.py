"""Many local agents' stores, filled before they start, behind the Fleet calls the app makes: the Runs
screen across a fleet, in the tests and in tests/bench/bench_tui.py."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from mldeck.core.paths import Layout
from mldeck.core.store import Store
from mldeck.tui.fleet import Fleet, Outcome


class ManyHomes:
    """Local agents, one home each, behind the Fleet calls the app uses (a stand-in for SSH hosts)."""

    def __init__(self, homes: dict[str, Path]) -> None:
        self.fleets = {name: Fleet({name: None}, local_home=home) for name, home in homes.items()}
        self.names = list(homes)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def start(self) -> None:
        for f in self.fleets.values():
            f.start()

    def state(self, host: str) -> str:
        return self.fleets[host].state(host)

    async def call(self, host: str, method: str, **params: Any) -> Any:
        self.calls.append((host, method, params))
        return await self.fleets[host].call(host, method, **params)

    def subscribe(self, host: str, topic: str, **filters: str) -> Any:
        return self.fleets[host].subscribe(host, topic, **filters)

    async def gather(self, method: str, **params: Any) -> dict[str, Outcome]:
        results = await asyncio.gather(*(f.gather(method, **params) for f in self.fleets.values()))
        return {k: v for r in results for k, v in r.items()}

    async def close(self) -> None:
        for f in self.fleets.values():
            await f.close()


def fill_store(home: Path, n: int, steps: int = 3, seed: int = 0) -> None:
    """n finished runs with loss and val_acc (steps points each), written before the agent opens the file;
    another seed, other values and times (one second apart, shifted by seed/10 s: hosts' runs interleave)."""
    rnd = random.Random(seed)
    now = time.time() - seed / 10
    ids = [f"r{seed}-{i:06d}" for i in range(n)]
    statuses = ["succeeded"] * 8 + ["failed", "stopped"]
    runs = pa.table({
        "run_id": ids, "experiment": [f"exp-{i % 40}" for i in range(n)],
        "name": [f"mlp-{i % 997}" for i in range(n)], "status": [rnd.choice(statuses) for _ in range(n)],
        "created_at": [now - i for i in range(n)], "started_at": [now - i for i in range(n)],
        "ended_at": [now - i + rnd.uniform(5, 9000) for i in range(n)],
        "cost_usd": [rnd.random() for _ in range(n)],
    })
    keys = ["loss", "val_acc"]
    metrics = pa.table({
        "run_id": [r for r in ids for _ in range(len(keys) * steps)],
        "key": [k for _ in ids for k in keys for _ in range(steps)],
        "step": [s for _ in ids for _ in keys for s in range(steps)],
        "ts": [now] * (n * len(keys) * steps),
        "value": [rnd.random() for _ in range(n * len(keys) * steps)],
    })
    layout = Layout(home)
    home.mkdir(parents=True, exist_ok=True)
    store = Store(layout.db)
    store.append("runs", runs)
    store.append("metrics", metrics)
    store.close()
