"""The README's framework sections (Lightning, Transformers, MLflow) run, in order, in a fresh home of their
own: a file apart from tests/test_readme.py, so that another test worker runs it beside the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_readme import OWN_HOME, run_sections, sections


@pytest.mark.timeout(600)
def test_readme_framework_blocks_run(tmp_path: Path) -> None:
    apart = [s for s in sections() if s[0].startswith(OWN_HOME)]
    assert apart, f"no README section begins with any of {OWN_HOME}"
    run_sections(apart, tmp_path / "home")
