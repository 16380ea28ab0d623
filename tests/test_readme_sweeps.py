"""The README's "Jobs, sweeps, cost" blocks, run in a home of their own (see tests/test_readme.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_readme import run_apart

TITLE = "Jobs, sweeps, cost"

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_readme_sweep_blocks_run(tmp_path: Path) -> None:
    run_apart(TITLE, tmp_path / "home")
