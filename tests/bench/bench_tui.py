"""TUI benchmarks: cold start to first frame, Runs with 100,000 runs, idle CPU watching 10 live hosts.

`python tests/bench/bench_tui.py [--hosts 10] [--runs 100000] [--spread]`: a table with targets and peers.
Agents are real (`python -m mldeck.agent run`, simulated 2-GPU hosts, each in its own home); the 100,000 runs
sit in a real store (written before its agent starts) and reach the TUI through `runs.table`. Without --spread
they are all in the first host's store and the Runs screen watches that host alone; with --spread each host's
store holds runs/hosts of them and the Runs screen watches every host (each host's pages, merged), and
its key is sent the moment every link is up (without --spread, 2 s later), so that "open → first frame"
includes fetching the first pages: the issue's "first paint after the links are up".
"Next frame" is the moment the app hands a rendered update to its driver (headless: the write is
skipped), hooked on `App._display`; Pilot's own waits (≥ 2 × 20 ms per key) are not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mldeck.tui.app import MldeckApp  # noqa: E402
from mldeck.tui.fleet import Fleet  # noqa: E402
from tests.conftest import start_agent  # noqa: E402
from tests.tui.fleet_homes import ManyHomes, fill_store  # noqa: E402

COLD = """
import asyncio, os, sys, time
t0 = float(os.environ["T0"])
from pathlib import Path
from mldeck.tui.app import MldeckApp
from mldeck.tui.fleet import Fleet
async def main():
    app = MldeckApp(lambda: Fleet({"local": None}, local_home=Path(os.environ["HOME_DIR"])))
    shown = asyncio.Event()
    display = app._display
    def first(screen, update):
        display(screen, update)
        if update is not None and not shown.is_set():
            print(time.time() - t0, flush=True)
            shown.set()
    app._display = first
    async with app.run_test(size=(140, 40)):
        await shown.wait()
asyncio.run(main())
"""


class Frames:
    """Counts the frames the app renders; `await frames.after(n)` waits for the first one after n."""

    def __init__(self, app: MldeckApp) -> None:
        self.count = 0
        self.changed = asyncio.Event()
        display = app._display

        def hooked(screen: Any, update: Any) -> None:
            display(screen, update)
            if update is not None:
                self.count += 1
                self.changed.set()

        app._display = hooked  # type: ignore[method-assign]

    async def after(self, n: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.count <= n:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))


def cold_start(home: Path, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        env = {**os.environ, "T0": repr(time.time()), "HOME_DIR": str(home), "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", COLD], env=env, capture_output=True, text=True, cwd=REPO,
                             timeout=120)
        times.append(float(out.stdout.strip().splitlines()[0]))
    return min(times)


async def links_up(app: MldeckApp, hosts: list[str], timeout: float = 60) -> None:
    """Until every host's link is up (the app's Fleet connects them as it starts)."""
    deadline = time.monotonic() + timeout
    while (down := [h for h in hosts if app.fleet.state(h) != "up"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"hosts not up after {timeout:g} s: {down}")
        await asyncio.sleep(0.02)


async def settled(screen: Any, frames: Frames, sort: str | None = None, timeout: float = 60) -> None:
    """Until every host has answered the screen's sort and filter (and the merge is shown)."""
    deadline = time.monotonic() + timeout
    while not (screen.answered() and (sort is None or screen.asked[0] == sort)):
        await frames.after(frames.count, timeout=max(0.01, deadline - time.monotonic()))


async def runs_at_scale(make_fleet: Callable[[], Any], hosts: list[str], settle_s: float) -> dict[str, float]:
    """The Runs screen watching `hosts`, opened settle_s after every link is up: open, every host's first
    page, keys, repaint, a sort and a filter every host answers, End for the next pages."""
    from textual import events

    app = MldeckApp(make_fleet)
    frames = Frames(app)
    async with app.run_test(size=(140, 40)) as pilot:
        await links_up(app, hosts)
        if settle_s:
            await pilot.pause(settle_s)
        t = time.perf_counter()
        app._driver.send_message(events.Key("2", "2"))
        while not (app.current_mode == "runs" and app.screen.view.num_rows):
            await frames.after(frames.count)
        first = time.perf_counter() - t
        screen = app.screen
        first_rows = screen.view.num_rows
        first_hosts = len(set(screen.data["host"].to_pylist()))
        await settled(screen, frames)
        merged = time.perf_counter() - t
        await pilot.pause(0.5)
        presses = []
        for _ in range(30):
            seen = frames.count
            t = time.perf_counter()
            app._driver.send_message(events.Key("down", None))
            await frames.after(seen)
            presses.append(time.perf_counter() - t)
            await asyncio.sleep(0.05)
        t = time.perf_counter()
        screen.load(screen.data)
        seen = frames.count
        await frames.after(seen)
        repaint = time.perf_counter() - t
        t = time.perf_counter()
        screen.table.sort_by("m:loss", False)
        await settled(screen, frames, "m:loss")
        sort = time.perf_counter() - t
        t = time.perf_counter()
        await pilot.press("slash", *"status:failed")
        filt = (time.perf_counter() - t) / len("status:failed ")
        t = time.perf_counter()
        await pilot.press("enter")
        await settled(screen, frames)
        answered = time.perf_counter() - t
        assert screen.view.num_rows > 0 and set(screen.view["status"].to_pylist()) == {"failed"}
        held = screen.data.num_rows
        t = time.perf_counter()
        await pilot.press("end")
        while screen.data.num_rows <= held and screen.total() > held:
            await frames.after(frames.count, timeout=60)
        scrolled = time.perf_counter() - t
    presses.sort()
    return {"first": first, "first_rows": first_rows, "first_hosts": first_hosts, "merged": merged,
            "repaint": repaint, "shown": held, "key_p50": presses[len(presses) // 2],
            "key_p95": presses[int(len(presses) * 0.95)], "filter_key": filt, "sort": sort,
            "filtered": answered, "scrolled": scrolled}


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
    ap.add_argument("--spread", action="store_true",
                    help="runs/hosts runs in each host's store, the Runs screen watching every host")
    args = ap.parse_args()
    load = os.getloadavg()
    per_host = args.runs // args.hosts if args.spread else args.runs
    total = per_host * args.hosts if args.spread else args.runs
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.hosts if args.spread else 1):
            fill_store(Path(tmp) / f"h{i}", per_host, seed=i)
        agents = [start_agent(Path(tmp) / f"h{i}") for i in range(args.hosts)]
        homes = {f"gpu-{i}": a.home for i, a in enumerate(agents)}
        try:
            cold = cold_start(agents[-1].home)
            if args.spread:
                scale = asyncio.run(runs_at_scale(lambda: ManyHomes(homes), list(homes), 0.0))
            else:
                home = agents[0].home
                local = lambda: Fleet({"local": None}, local_home=home)  # noqa: E731
                scale = asyncio.run(runs_at_scale(local, ["local"], 2.0))
            cpu = asyncio.run(idle_cpu(homes, 5, args.window))
        finally:
            for a in agents:
                a.stop()
    n = f"{total:,}"
    shape = f"{args.hosts} hosts x {per_host:,}" if args.spread else n

    def ms(seconds: float) -> str:
        return f"{seconds * 1000:.0f} ms"

    rows = [
        ("cold start → first frame (best of 3)", f"{cold * 1000:.0f} ms", "< 1000 ms", "-"),
        (f"Runs ({shape}): open → first frame with runs", ms(scale["first"]), "< 300 ms",
         "Textual DataTable 12.7 s (NOTES)"),
        ("Runs: rows in that first frame (from hosts)",
         f"{scale['first_rows']:,} ({scale['first_hosts']})", "-", "-"),
        ("Runs: open → every host's first page merged", ms(scale["merged"]), "-", "-"),
        ("Runs: rows held → next frame", ms(scale["repaint"]), "< 300 ms", "-"),
        ("Runs: key press → next frame, p50 of 30", f"{scale['key_p50'] * 1000:.1f} ms", "< 50 ms", "-"),
        ("Runs: key press → next frame, p95 of 30", f"{scale['key_p95'] * 1000:.1f} ms", "< 50 ms", "-"),
        ("Runs: sort by a metric → every host's new first page", ms(scale["sort"]), "-", "-"),
        ("Runs: live filter, per typed key (Pilot)", f"{scale['filter_key'] * 1000:.0f} ms", "-", "-"),
        ("Runs: last key of a filter → every host's answer merged", ms(scale["filtered"]), "-", "-"),
        (f"Runs: End past the {scale['shown']:,} failed runs held → the next ones", ms(scale["scrolled"]),
         "-", "-"),
        (f"idle CPU watching {args.hosts} live hosts" + (f" ({per_host:,} runs each)" if args.spread else ""),
         f"{cpu:.1f} % of a core", "< 5 %", "-"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'what':<{w}}  {'mldeck':>16}  {'target':>10}  peer")
    for r in rows:
        print(f"{r[0]:<{w}}  {r[1]:>16}  {r[2]:>10}  {r[3]}")


if __name__ == "__main__":
    main()
