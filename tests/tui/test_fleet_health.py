"""A problem in the agent's background work (here a line ingest had to skip) shows under its host on the
Fleet screen, in the words of `agent status`."""

from __future__ import annotations

import asyncio

from mldeck.tui.app import MldeckApp
from mldeck.tui.fleet import Fleet
from mldeck.tui.widgets.host_row import HostNotes, HostRow
from tests.cli.test_health import poison
from tests.conftest import AgentProc, wait_for
from tests.tui.conftest import until
from tests.tui.test_app import SIZE

SAID = "ingest: 1 bad lines skipped, last runs/poisoned/metrics.jsonl:2"


def test_a_skipped_line_shows_under_its_host(agent_home: AgentProc) -> None:
    poison(agent_home.home)
    wait_for(lambda: SAID in agent_home.cli("agent", "status").out, timeout=30, what="the skipped line")

    async def go() -> None:
        app = MldeckApp(lambda: Fleet({"local": None}, local_home=agent_home.home))
        async with app.run_test(size=SIZE) as pilot:
            row = await until(pilot, lambda: app.screen.query(HostRow).first(), what="the host row")
            notes = lambda: [line.plain for line in row.query_one(HostNotes).lines]  # noqa: E731
            await until(pilot, lambda: any(SAID in line for line in notes()), timeout=20,
                        what="the problem under the host")
            assert notes()[0].strip().startswith(f"! {SAID}")

    asyncio.run(go())
