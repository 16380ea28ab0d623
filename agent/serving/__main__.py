"""`python -m mldeck.agent.serving --home H [--port 8700 ...]`: run the model server.

Its settings are the home's `[serving]` table (agent.toml); a flag named after a key
(`--max-batch-size 32`, `--require-token`) overrides it for this process.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import ipaddress
import logging
import signal
import sys

import msgspec
from aiohttp import web

from mldeck.agent.nvml import Nvml
from mldeck.agent.serving.app import Server
from mldeck.agent.serving.auth import Auth
from mldeck.agent.serving.guard import Guard, GuardedSite, connection_limit
from mldeck.agent.serving.hardware import Hardware
from mldeck.agent.serving.metrics import Metrics
from mldeck.agent.serving.pool import Pool, Settings
from mldeck.agent.serving.predlog import PredictionLog
from mldeck.agent.simgpu import SimulatedNvml
from mldeck.core.config import ConfigError, ServingSection, load_config
from mldeck.core.errors import MldeckError
from mldeck.core.paths import Layout, mldeck_home
from mldeck.core.servingtoken import serving_token

log = logging.getLogger("mldeck.serving")

EXIT_CONFIG = 2
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
    p = argparse.ArgumentParser(prog="python -m mldeck.agent.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", help="the agent's data folder (default $MLDECK_HOME)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    overrides = p.add_argument_group("[serving] overrides")
    for field in msgspec.structs.fields(ServingSection):
        if field.name in ServingSection.AGENT_ONLY:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            overrides.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            overrides.add_argument(flag, dest=field.name, type=type(field.default), default=None,
                                   help=f"(default {field.default})")
    return p.parse_args(argv)


def settings_of(args: argparse.Namespace, layout: Layout) -> tuple[ServingSection, int]:
    """The home's [serving] table with this command line's flags on top, checked; and simulated GPUs."""
    config = load_config(layout.config)
    given = {f.name: getattr(args, f.name) for f in msgspec.structs.fields(ServingSection)
             if f.name not in ServingSection.AGENT_ONLY and getattr(args, f.name) is not None}
    try:
        serving = msgspec.convert({**msgspec.to_builtins(config.serving), **given}, ServingSection)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"[serving]: {exc}") from None
    if not is_loopback(serving.host) and not serving.require_token:
        raise ConfigError(
            f"[serving] host = {serving.host!r} is reachable beyond this machine: set require_token = true "
            "so that inference needs the token too (`mldeck serve token` prints it), or listen on 127.0.0.1")
    return serving, config.agent.simulate_gpus


async def serve(config: ServingSection, layout: Layout, token: str, simulate_gpus: int) -> int:
    settings = Settings(config.max_batch_size, config.max_queue_delay_ms, pick_device(config.device))
    metrics = Metrics()
    predlog = PredictionLog(layout.serving, config.log_queue, config.segment_bytes)
    executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="forward")
    pool = Pool(layout.serving, settings, metrics, predlog, executor)
    nvml = Nvml(SimulatedNvml(simulate_gpus)) if simulate_gpus else Nvml()
    nvml.start()
    guard = Guard(config.header_timeout_s, config.idle_timeout_s, connection_limit(config.max_connections),
                  metrics)
    server = Server(pool, metrics, config, Auth(token, config.require_token), guard, Hardware(nvml))
    seeded = await asyncio.to_thread(server.recent.seed, layout.serving)
    log.info("feedback accepted for %d request ids from the prediction logs, and every new one", seeded)
    runner = web.AppRunner(server.app(), access_log=None, shutdown_timeout=3, handle_signals=False)
    await runner.setup()
    try:
        await GuardedSite(runner, guard, config.host, config.port, backlog=1024).start()
    except OSError as exc:
        await runner.cleanup()
        predlog.close()
        print(f"mldeck serving: cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_BIND
    log.info("serving on http://%s:%d (device %s, max_batch_size %d, max_queue_delay_ms %g, token %s)",
             config.host, config.port, settings.device, settings.max_batch_size, settings.max_queue_delay_ms,
             "for everything" if config.require_token else "for feedback")
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
    nvml.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    layout = Layout(mldeck_home(args.home))
    try:
        config, simulate_gpus = settings_of(args, layout)
        layout.serving.mkdir(parents=True, exist_ok=True)
        token = serving_token(layout.home)
    except (ConfigError, MldeckError) as exc:
        print(f"mldeck serving: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    sys.setswitchinterval(0.001)  # the log writer and loader threads must not hold the loop up long
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    import uvloop  # libuv's loop: about a quarter more requests/s and a fifth off p99 here

    return uvloop.run(serve(config, layout, token, simulate_gpus))


if __name__ == "__main__":
    sys.exit(main())
