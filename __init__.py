"""mldeck, the one import name: the repository's core/, agent/ and tui/ install as mldeck.core/agent/tui.

A training script writes `import mldeck; run = mldeck.init(...)`. The SDK loads on first use, so that
`python -m mldeck.agent` (which must never import torch) pays nothing for these names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mldeck.core.version import VERSION as __version__

__all__ = ["PREEMPTED_EXIT", "RUN_DIR_ENV", "Run", "__version__", "init"]

if TYPE_CHECKING:
    from mldeck.core.track import PREEMPTED_EXIT, RUN_DIR_ENV, Run, init


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mldeck.core import track

        return getattr(track, name)
    raise AttributeError(f"module 'mldeck' has no attribute {name!r}")
