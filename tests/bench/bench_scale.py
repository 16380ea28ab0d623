"""Scale benchmarks (issue 18): a year of runs on one host, through the agent's normal ingest.

Not a timed test: run it by hand and read the table.

    python tests/bench/bench_scale.py [--sizes 1M,10M,50M] [--long-points 500000]

Each size is a fresh home whose store is filled through the agent's normal ingest by N concurrent
writers (threads; 10 for 1 M points, 100 beyond) writing runs of 10 keys x 1,000 steps in the SDK's
line format (init line, point lines, finish line) into runs/<id>/metrics.jsonl, FLUSH_LINES lines per
append as the SDK's flush thread does. The lines are encoded before the clock starts, which runs from
the first write to the agent reporting every line committed. Then,
medians of three warm calls on one connection: runs.list of 1,000 runs, the Runs screen's first page
(runs.table, 1,000 runs), one run's runs.get and runs.metrics; the agent's RSS at rest (once it has
given back its store's cache: agent status says); the store's
bytes per point once the agent has stopped; the first page again after a restart. 20 long runs
(--long-points each, 2 keys) are written into the largest store and compared as the Compare screen
does (runs.get and runs.metrics at 500 points for all 20 at once). Last, the older half of each store's
runs is archived (`runs.archive`) and the store compacted (`store.compact`). Once per run (it does not
depend on the store), shown in the largest size's column: cold and warm `hosts status` to 20 agents
behind one real sshd (tests/bench/bench_ssh.py's fleet; --no-fleet skips it, as does a box without sshd).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import psutil

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mldeck.agent.storeops import TRIM_ABOVE  # noqa: E402
from mldeck.core.client import connect_unix  # noqa: E402
from tests.bench.bench_ssh import AGENTS, fleet_status_figures  # noqa: E402
from tests.conftest import rpc, start_agent  # noqa: E402
from tests.ssh.conftest import SSHD  # noqa: E402

KEYS = 10
STEPS = 1000
FLUSH_LINES = 200
BASE = 1.7e9
"""Run i of a store is created at BASE + i and ends 1e4 s later (in 2023: old enough to archive)."""
ENCODE = msgspec.json.Encoder().encode


def run_id_at(i: int, at: float) -> str:
    """A run id as the SDK makes them (core.paths.new_run_id): creation time, then a unique suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(at)) + f"-{i % 0xFFFFFF:06x}"


def run_lines(i: int, at: float, body: list[bytes]) -> list[bytes]:
    """A run's metrics.jsonl as the SDK writes it: its init line, its points (body), its finish line."""
    init = {"name": f"trial-{i}", "experiment": "scale", "params": {"lr": 1e-3 * (1 + i % 7), "seed": i},
            "tags": {}, "git_sha": "0" * 40, "git_dirty": False, "data_hash": None, "host": "bench",
            "user": "bench", "created_at": at, "command": ["python", "train.py"], "pid": 1}
    return [ENCODE({"t": at, "e": "init", "d": init}), *body,
            ENCODE({"t": at + 1e4, "e": "finish", "d": {"status": "succeeded", "reason": None}})]


def points_body(steps: int, keys: int) -> list[bytes]:
    names = [f"k{j}" for j in range(keys)]
    return [ENCODE({"t": 1.7e9 + s * 0.01, "s": s, "m": {n: 1.0 / (s + 1 + j) for j, n in enumerate(names)}})
            for s in range(steps)]


def writer(home: Path, first: int, count: int, body: list[bytes], base: float) -> None:
    """One writer: its runs one after another, each appended FLUSH_LINES lines at a time (as the SDK's
    flush thread does)."""
    for i in range(first, first + count):
        lines = run_lines(i, base + i, body)
        folder = home / "runs" / run_id_at(i, base + i)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "metrics.jsonl", "ab") as fh:
            for at in range(0, len(lines), FLUSH_LINES):
                fh.write(b"\n".join(lines[at:at + FLUSH_LINES]) + b"\n")
                fh.flush()


BEFORE = {  # issue 18's measurements, by size
    "ingest points/s": ("152 k", "171 k", "174 k"),
    "runs.list, 1,000 runs": ("60 ms", "362 ms", "645 ms (903 cold)"),
    "runs.table first page (1,000 runs)": ("120 ms", "601 ms", "1,223 ms"),
    "runs.table first page after a restart": ("-", "-", "1,860 ms"),
    "runs.get + runs.metrics, one run": ("9-118 ms", "12-113 ms", "13-128 ms"),
    "agent RSS at rest after ingest": ("217 MB", "428 MB", "1,212 MB (peak 1.77 GB)"),
    "store bytes per point": ("20.5", "28.8", "22.3"),
}
SIZE_COLUMN = {1_000_000: 0, 10_000_000: 1, 50_000_000: 2}
FLEET_ROW = f"fleet status, {AGENTS} agents behind one sshd: cold (warm)"
FLEET_BEFORE = "1.83 s (0.32 s with links up)"


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def result(home: Path, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    """A call's result; its error, whole, when it failed."""
    reply = rpc(home, method, params, timeout=timeout)
    if "result" not in reply:
        raise RuntimeError(f"{method} failed: {reply}")
    return reply["result"]


def status(home: Path) -> dict[str, Any]:
    return rpc(home, "agent.status", timeout=30).get("result", {})


def fill(home: Path, runs: int, writers: int, steps: int, keys: int, base: float) -> float:
    """Seconds from the first write to every line committed (the agent counts lines). The lines are
    encoded before the clock starts: it measures the agent, not the generator."""
    body = points_body(steps, keys)
    lines = runs * (steps + 2)
    before = status(home)["ingest"]["rows"]
    share = -(-runs // writers)
    threads = [threading.Thread(target=writer, args=(home, first, min(share, runs - first), body, base))
               for first in range(0, runs, share)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    while status(home)["ingest"]["rows"] < before + lines:
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    for thread in threads:
        thread.join()
    return elapsed


async def median_ms(call: Callable[[], Awaitable[Any]], reps: int = 3) -> float:
    await call()  # warm
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def reads(home: Path) -> dict[str, float]:
    client = await connect_unix(home / "agent.sock")
    try:
        runs = await client.call("runs.list", limit=1000)
        assert runs and all(r["metrics"] for r in runs)
        one = runs[len(runs) // 2]["run_id"]

        async def get_and_metrics() -> None:
            await client.call("runs.get", run_id=one)
            await client.call("runs.metrics", run_id=one, max_points=500)

        return {
            "list": await median_ms(lambda: client.call("runs.list", limit=1000)),
            "list100": await median_ms(lambda: client.call("runs.list", limit=100)),
            "table": await median_ms(lambda: client.call("runs.table", offset=0, limit=1000)),
            "one": await median_ms(get_and_metrics),
        }
    finally:
        await client.close()


async def first_page_ms(home: Path) -> float:
    client = await connect_unix(home / "agent.sock")
    try:
        t0 = time.perf_counter()
        page = await client.call("runs.table", offset=0, limit=1000)
        assert page["columns"]["run_id"]
        return (time.perf_counter() - t0) * 1000
    finally:
        await client.close()


async def compare_ms(home: Path, run_ids: list[str]) -> tuple[float, float]:
    """The Compare screen's fetch of 20 runs (500 points a curve): one runs.compare call, as it does now,
    and every runs.get and runs.metrics at once, as it did before."""
    client = await connect_unix(home / "agent.sock")
    try:
        async def one_call() -> None:
            got = await client.call("runs.compare", run_ids=run_ids, max_points=500)
            assert all(len(got["series"][r]["k0"]["step"]) > 100 for r in run_ids)

        async def per_run() -> None:
            await asyncio.gather(*(client.call("runs.get", run_id=r) for r in run_ids))
            got = await asyncio.gather(*(client.call("runs.metrics", run_id=r, max_points=500)
                                         for r in run_ids))
            assert all(len(g["series"]["k0"]["step"]) > 100 for g in got)

        return await median_ms(one_call), await median_ms(per_run)
    finally:
        await client.close()


def at_rest(home: Path, timeout_s: float = 60.0) -> float:
    """Seconds until the agent, ingest done, has its store's cache at most TRIM_ABOVE of the limit (the
    agent gives the rest back once ingest rests for a tick); then 2 s more for the allocator."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        store = status(home)["store"]
        if store["cache_bytes"] <= store["limit_bytes"] * TRIM_ABOVE:
            break
        time.sleep(0.5)
    time.sleep(2)
    return time.perf_counter() - t0


def rss_mb(pid: int) -> tuple[float, float]:
    """The process's RSS now and its peak (VmHWM), MB."""
    proc = psutil.Process(pid)
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return proc.memory_info().rss / 2**20, peak


def store_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in home.glob("mldeck.duckdb*") if p.is_file())


def bench_size(root: Path, points: int, long_points: int, writers: int, memory_limit: str) -> dict[str, Any]:
    home = root / f"home-{points}"
    runs = points // (KEYS * STEPS)
    agent = start_agent(home, config=f'[store]\nmemory_limit = "{memory_limit}"\n')
    out: dict[str, Any] = {"runs": runs, "writers": writers}
    try:
        seconds = fill(home, runs, writers, STEPS, KEYS, base=BASE)
        out["ingest"] = runs * STEPS * KEYS / seconds
        out["rest_s"] = at_rest(home)
        out["rss"], out["peak"] = rss_mb(agent.proc.pid)
        out["cache"] = status(home)["store"]["cache_bytes"] / 2**20
        out.update(asyncio.run(reads(home)))
        out["rss_after_reads"], out["peak"] = rss_mb(agent.proc.pid)
        if long_points:
            steps = long_points // 2
            seconds = fill(home, 20, 20, steps, 2, base=1.8e9)
            out["long_ingest"] = 20 * long_points / seconds
            ids = [r["run_id"] for r in result(home, "runs.list", {"limit": 20})]
            out["compare"], out["compare_per_run"] = asyncio.run(compare_ms(home, ids))
            out["rss_after_compare"], out["peak"] = rss_mb(agent.proc.pid)
    finally:
        agent.stop()
    out["bytes_per_point"] = store_bytes(home) / (runs * STEPS * KEYS + 20 * long_points)
    agent = start_agent(home)
    try:
        out["cold_table"] = asyncio.run(first_page_ms(home))
        out.update(archive_and_compact(home, runs, base=BASE))
    finally:
        agent.stop()
    return out


def archive_and_compact(home: Path, runs: int, base: float) -> dict[str, Any]:
    """Archive the older half of the store's runs (run i ended at base + i + 1e4), then compact the
    store: seconds, points and bytes of each."""
    cutoff = base + runs // 2 + 1e4 - 0.5
    t0 = time.perf_counter()
    archived = result(home, "runs.archive", {"before_s": time.time() - cutoff}, timeout=3600)
    took = time.perf_counter() - t0
    assert len(archived["runs"]) == runs // 2, archived["kept"]
    compacted = result(home, "store.compact", timeout=3600)
    return {"archive_s": took, "archived_points": archived["points"], "archive_bytes": archived["bytes"],
            "compact_s": compacted["took_s"], "store_before": compacted["bytes_before"],
            "store_after": compacted["bytes_after"]}


def fleet_figures(root: Path) -> tuple[float, float, int] | str:
    """Cold and warm `hosts status` to AGENTS agents behind one sshd, and the hosts up; or why not."""
    if not Path(SSHD).exists() or not shutil.which("ssh-keygen"):
        return f"skipped: {SSHD} or ssh-keygen is missing (install openssh-server)"
    return fleet_status_figures(root / "fleet")


def table(results: dict[int, dict[str, Any]], long_points: int,
          fleet: tuple[float, float, int] | str) -> list[tuple[str, ...]]:
    sizes = sorted(results)
    header = ("what", *(x for s in sizes for x in (f"{s / 1e6:g} M before", f"{s / 1e6:g} M after")))

    def row(name: str, after: Callable[[dict[str, Any]], str]) -> tuple[str, ...]:
        cells = []
        for s in sizes:
            before = BEFORE.get(name)
            cells.append(before[SIZE_COLUMN[s]] if before and s in SIZE_COLUMN else "-")
            cells.append(after(results[s]))
        return (name, *cells)

    rows = [
        header,
        row("ingest points/s", lambda r: f"{r['ingest'] / 1e3:,.0f} k ({r['writers']} writers)"),
        row("runs.list, 1,000 runs", lambda r: f"{r['list']:,.0f} ms"),
        row("runs.list, 100 runs (the same page at every size)", lambda r: f"{r['list100']:,.0f} ms"),
        row("runs.table first page (1,000 runs)", lambda r: f"{r['table']:,.0f} ms"),
        row("runs.table first page after a restart", lambda r: f"{r['cold_table']:,.0f} ms"),
        row("runs.get + runs.metrics, one run", lambda r: f"{r['one']:,.0f} ms"),
        row("agent RSS at rest after ingest", lambda r: f"{r['rss']:,.0f} MB (peak {r['peak']:,.0f}; "
            f"cache {r['cache']:,.0f} MB, at rest {r['rest_s']:.0f} s after ingest)"),
        row("store bytes per point", lambda r: f"{r['bytes_per_point']:.1f}"),
        row("archive of the older half of the runs", lambda r: f"{r['archive_s']:.1f} s, "
            f"{r['archived_points'] / r['archive_s'] / 1e3:,.0f} k points/s, "
            f"{r['archive_bytes'] / r['archived_points']:.1f} bytes/point in Parquet"),
        row("store compact after it", lambda r: f"{r['compact_s']:.1f} s, "
            f"{r['store_before'] / 2**20:,.0f} -> {r['store_after'] / 2**20:,.0f} MiB"),
    ]
    largest = results[sizes[-1]]
    if "compare" in largest:
        rows.append(row(f"Compare, 20 runs x {long_points:,} points (largest store): runs.compare",
                        lambda r: f"{r['compare']:,.0f} ms" if "compare" in r else "-"))
        rows.append(row("  the same as 20 runs.get + 20 runs.metrics (before)",
                        lambda r: f"{r['compare_per_run']:,.0f} ms" if "compare_per_run" in r else "-"))
        rows.append(row("ingest of those 20 long runs, points/s",
                        lambda r: f"{r['long_ingest'] / 1e3:,.0f} k" if "long_ingest" in r else "-"))
    if isinstance(fleet, str):
        fleet_after = fleet
    else:
        cold, warm, up = fleet
        fleet_after = f"{cold:.2f} s ({warm:.2f} s with links up; {up}/{AGENTS} up)"
    rows.append((FLEET_ROW, *["-"] * (2 * len(sizes) - 2), FLEET_BEFORE, fleet_after))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1M,10M", help="store sizes in points, e.g. 1M,10M,50M")
    parser.add_argument("--long-points", type=int, default=500_000,
                        help="points of each of the 20 long runs compared in the largest store (0: none)")
    parser.add_argument("--dir", help="where the homes go (default: a temporary folder, removed after)")
    parser.add_argument("--memory-limit", default="512MB", help="[store] memory_limit of the agents")
    parser.add_argument("--fleet", action=argparse.BooleanOptionalAction, default=True,
                        help=f"time `hosts status` to {AGENTS} agents behind one sshd (--no-fleet: skip)")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for size in sizes:
            long_points = args.long_points if size == max(sizes) else 0
            writers = 10 if size <= 1_000_000 else 100
            results[size] = bench_size(Path(tmp), size, long_points, writers, args.memory_limit)
            print(f"{size:,} points: {results[size]}", file=sys.stderr, flush=True)
        fleet = fleet_figures(Path(tmp)) if args.fleet else "skipped (--no-fleet)"
        print(f"fleet status: {fleet}", file=sys.stderr, flush=True)
    rows = table(results, args.long_points, fleet)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    print(f"[store] memory_limit = {args.memory_limit!r}; load average at the end: "
          f"{' '.join(f'{x:.1f}' for x in psutil.getloadavg())}, {psutil.cpu_count()} cores")


if __name__ == "__main__":
    main()
