"""The registry's small rules, as leaves: alias names, metric thresholds and metric directions.

The config checks its gates with these when it loads, and the registry applies them at promotion;
this module imports nothing of mldeck but the errors, so both may use it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from mldeck.core.errors import Invalid

ALIAS_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
CONVENTIONAL_ALIASES = ("production", "staging", "challenger")
LOWER_IS_BETTER = re.compile(r"(loss|error|err|mse|mae|rmse|perplexity|latency|ece)$")
_RULE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+|nan|inf)\s*$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}
_NEGATED = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!=", "!=": "=="}


def check_alias(alias: str) -> str:
    """An alias names a pointer in the registry and a route on the model server: a short slug."""
    if not isinstance(alias, str) or not ALIAS_PATTERN.match(alias):
        raise Invalid(
            f"alias {alias!r} is not allowed: use 1-64 characters from a-z, 0-9, '_' and '-' "
            f"(e.g. {', '.join(CONVENTIONAL_ALIASES)})"
        )
    return alias


@dataclass(frozen=True)
class MetricRule:
    """One threshold gate, `val_acc >= 0.92`."""

    key: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.key} {self.op} {self.threshold:g}"

    def holds(self, value: float) -> bool:
        return _OPS[self.op](value, self.threshold)

    def broken_by(self, value: float) -> str:
        """Why `value` fails the rule, with its numbers (`val_acc 0.9 < 0.92`)."""
        return f"{self.key} {value:.4g} {_NEGATED[self.op]} {self.threshold:g}"


def parse_rule(text: str) -> MetricRule:
    """Parse `KEY OP NUMBER`; config loading calls this so a typo fails at start, not at promotion."""
    match = _RULE.match(text)
    if not match:
        raise ValueError(
            f"gate {text!r} is not `METRIC OP NUMBER` with OP one of {', '.join(_OPS)} "
            "(e.g. \"val_acc >= 0.92\")"
        )
    return MetricRule(match[1], match[2], float(match[3]))


def parse_direction(text: str) -> tuple[str, bool]:
    """`min:KEY` or `max:KEY`, or a bare KEY where loss/error-like names are lower-is-better."""
    direction, _, key = text.rpartition(":")
    if direction not in ("", "min", "max") or not re.fullmatch(r"[A-Za-z0-9_./-]+", key):
        raise ValueError(f"no_worse_than_current {text!r} must be METRIC, min:METRIC or max:METRIC")
    lower = direction == "min" or (direction == "" and bool(LOWER_IS_BETTER.search(key)))
    return key, lower
