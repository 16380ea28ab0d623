"""The README's framework sections (Lightning, Transformers, MLflow) run, in order, in a fresh home of their
own: a file apart from tests/test_readme.py, so that another test worker runs it beside the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_readme import run_apart

TITLE = "Frameworks you already train with"

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_readme_framework_blocks_run(tmp_path: Path) -> None:
    run_apart(TITLE, tmp_path / "home")
