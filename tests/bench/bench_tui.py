"""TUI benchmarks: cold start to first frame, Runs with 100,000 runs, idle CPU watching 10 live hosts.

`python tests/bench/bench_tui.py [--hosts 10] [--runs 100000]`; prints a table with targets and peers.
Agents are real (`python -m agent run`, simulated 2-GPU hosts, each in its own home).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.conftest import start_agent  # noqa: E402
from tui.app import MldeckApp  # noqa: E402
from tui.fleet import Fleet, Outcome  # noqa: E402

COLD = """
import asyncio, os, sys, time
t0 = float(os.environ["T0"])
from pathlib import Path
from tui.app import MldeckApp
from tui.fleet import Fleet
async def main():
    app = MldeckApp(lambda: Fleet({"local": None}, local_home=Path(os.environ["HOME_DIR"])))
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.pause()
        print(time.time() - t0)
asyncio.run(main())
"""


class ManyHomes:
    """Local agents, one home each, behind the Fleet calls the app uses (a stand-in for SSH hosts)."""

    def __init__(self, homes: dict[str, Path]) -> None:
        self.fleets = {name: Fleet({name: None}, local_home=home) for name, home in homes.items()}
        self.names = list(homes)

    def start(self) -> None:
        for f in self.fleets.values():
            f.start()

    def state(self, host: str) -> str:
        return self.fleets[host].state(host)

    async def call(self, host: str, method: str, **params: Any) -> Any:
        return await self.fleets[host].call(host, method, **params)

    def subscribe(self, host: str, topic: str, **filters: str) -> Any:
        return self.fleets[host].subscribe(host, topic, **filters)

    async def gather(self, method: str, **params: Any) -> dict[str, Outcome]:
        results = await asyncio.gather(*(f.gather(method, **params) for f in self.fleets.values()))
        return {k: v for r in results for k, v in r.items()}

    async def close(self) -> None:
        for f in self.fleets.values():
            await f.close()


def cold_start(home: Path, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        env = {**os.environ, "T0": repr(time.time()), "HOME_DIR": str(home), "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", COLD], env=env, capture_output=True, text=True, cwd=REPO,
                             timeout=120)
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return min(times)


def fake_runs(n: int) -> list[dict[str, Any]]:
    rnd = random.Random(0)
    now = time.time()
    statuses = ["succeeded"] * 8 + ["failed", "running"]
    return [{
        "run_id": f"r{i:06d}", "experiment": f"exp-{i % 40}", "name": f"mlp-{i % 997}",
        "status": rnd.choice(statuses), "created_at": now - i, "started_at": now - i,
        "ended_at": now - i + 60,
        "cost_usd": rnd.random(), "metrics": {"loss": rnd.random(), "val_acc": rnd.random()},
    } for i in range(n)]


async def runs_at_scale(home: Path, n: int) -> dict[str, float]:
    from tui.screens.runs import runs_table

    rows = fake_runs(n)
    t = time.perf_counter()
    table = runs_table({"local": rows})
    build = time.perf_counter() - t
    app = MldeckApp(lambda: Fleet({"local": None}, local_home=home), live=False)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("2")
        screen = app.screen
        t = time.perf_counter()
        screen.load(table)
        await pilot.pause()
        paint = time.perf_counter() - t
        presses = []
        for _ in range(20):
            t = time.perf_counter()
            await pilot.press("down")
            presses.append(time.perf_counter() - t)
        t = time.perf_counter()
        await pilot.press("slash", *"status:running")
        filt = (time.perf_counter() - t) / len("status:running ")
        assert screen.view.num_rows < n
    presses.sort()
    return {"build": build, "paint": paint, "key_p50": presses[len(presses) // 2], "key_max": presses[-1],
            "filter_key": filt}


async def idle_cpu(homes: dict[str, Path], settle_s: float, window_s: float) -> float:
    app = MldeckApp(lambda: ManyHomes(homes))
    async with app.run_test(size=(160, 60)) as pilot:
        await pilot.pause(settle_s)
        t0, c0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
        await asyncio.sleep(window_s)
        c1 = resource.getrusage(resource.RUSAGE_SELF)
        up = sum(1 for h in homes if app.fleet.state(h) == "up")
        assert up == len(homes), f"only {up} of {len(homes)} hosts up"
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    return 100 * cpu / (time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--window", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        agents = [start_agent(Path(tmp) / f"h{i}") for i in range(args.hosts)]
        try:
            cold = cold_start(agents[0].home)
            scale = asyncio.run(runs_at_scale(agents[0].home, args.runs))
            cpu = asyncio.run(idle_cpu({f"gpu-{i}": a.home for i, a in enumerate(agents)}, 5, args.window))
        finally:
            for a in agents:
                a.stop()
    rows = [
        ("cold start → first frame (best of 3)", f"{cold * 1000:.0f} ms", "< 1000 ms", "-"),
        (f"Runs: {args.runs:,} runs → Arrow table", f"{scale['build'] * 1000:.0f} ms", "-", "-"),
        (f"Runs: {args.runs:,} runs, first paint", f"{scale['paint'] * 1000:.0f} ms", "< 300 ms",
         "Textual DataTable 12.7 s (NOTES)"),
        ("Runs: key press → next frame, p50", f"{scale['key_p50'] * 1000:.1f} ms", "< 50 ms", "-"),
        ("Runs: key press → next frame, max of 20", f"{scale['key_max'] * 1000:.1f} ms", "< 50 ms", "-"),
        ("Runs: live filter, per typed key", f"{scale['filter_key'] * 1000:.0f} ms", "-", "-"),
        (f"idle CPU watching {args.hosts} live hosts", f"{cpu:.1f} % of a core", "< 5 %", "-"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'what':<{w}}  {'mldeck':>16}  {'target':>10}  peer")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>16}  {r[2]:>10}  {r[3]}")


if __name__ == "__main__":
    main()
