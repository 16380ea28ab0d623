"""`python -m mldeck.agent.serving --home H [--host 127.0.0.1 --port 8700 ...]`: run the model server."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ipaddress
import logging
import signal
import sys

from aiohttp import web

from mldeck.agent.serving.app import Server
from mldeck.agent.serving.metrics import Metrics
from mldeck.agent.serving.pool import Pool, Settings
from mldeck.agent.serving.predlog import PredictionLog
from mldeck.core.config import ServingSection
from mldeck.core.paths import Layout, mldeck_home

log = logging.getLogger("mldeck.serving")

EXIT_BIND = 3


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def pick_device(device: str) -> str:
    """"auto" means the first GPU when torch sees one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = ServingSection()
    p = argparse.ArgumentParser(prog="python -m mldeck.agent.serving", description=__doc__)
    p.add_argument("--home", help="the agent's data folder (default $MLDECK_HOME)")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--max-queue-delay-ms", type=float, default=d.max_queue_delay_ms)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--log-queue", type=int, default=d.log_queue)
    p.add_argument("--segment-bytes", type=int, default=d.segment_bytes)
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    layout = Layout(mldeck_home(args.home))
    layout.serving.mkdir(parents=True, exist_ok=True)
    if not is_loopback(args.host):
        log.warning("listening on %s: the model server is reachable beyond this machine, "
                    "with no authentication", args.host)
    settings = Settings(args.max_batch_size, args.max_queue_delay_ms, pick_device(args.device))
    metrics = Metrics()
    predlog = PredictionLog(layout.serving, args.log_queue, args.segment_bytes)
    executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="forward")
    pool = Pool(layout.serving, settings, metrics, predlog, executor)
    server = Server(pool, metrics, args.max_body_bytes)
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=3)
    await runner.setup()
    try:
        await web.TCPSite(runner, args.host, args.port, backlog=1024).start()
    except OSError as exc:
        await runner.cleanup()
        predlog.close()
        print(f"mldeck serving: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_BIND
    log.info("serving on http://%s:%d (device %s, max_batch_size %d, max_queue_delay_ms %g)",
             args.host, args.port, settings.device, settings.max_batch_size, settings.max_queue_delay_ms)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watcher = loop.create_task(pool.watch(stop))
    await stop.wait()
    log.info("stopping: finishing requests in flight")
    await runner.cleanup()
    watcher.cancel()
    await asyncio.wait([watcher])
    await pool.close()
    executor.shutdown()
    predlog.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.setswitchinterval(0.001)  # the log writer and loader threads must not hold the loop up long
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    import uvloop  # libuv's loop: about a quarter more requests/s and a fifth off p99 here

    return uvloop.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
