"""Sweeps: the params of sweeps.*, the search-space grammar, trial generation, early-stopping rules,
and the sweeps table's queries.

Grammar: a grid axis is `name=v1,v2,...`; a random axis is `name=DIST(a,b)` with DIST one of
uniform, loguniform, int (uniform integers, inclusive) or choice(v1,v2,...). The grid is
crossed with itself; each trial draws the random axes once. Early stopping follows the
median stopping rule (Golovin et al., Google Vizier) or ASHA (Li et al.), as Optuna's
MedianPruner and SuccessiveHalvingPruner decide them. With `search`, an Optuna study in the
agent (agent/search.py) picks each trial's point of the same space instead, and Optuna's
pruners judge the trials.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from mldeck.core.errors import Invalid
from mldeck.core.jobs import JobSpec
from mldeck.core.protocol import Params
from mldeck.core.store import Store, rows_as_dicts

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_DIST = re.compile(r"^(uniform|loguniform|int|choice)\((.*)\)$")
MAX_TRIALS = 10_000
Mode = Literal["min", "max"]
EarlyStop = Literal["median", "asha", "hyperband"]
Search = Literal["tpe", "cmaes", "random", "grid"]


class SweepCreateParams(JobSpec, kw_only=True):
    """sweeps.create: the job every trial runs, its search space, and the early-stopping rule."""

    grid: list[str] = msgspec.field(default_factory=list)
    random: list[str] = msgspec.field(default_factory=list)
    trials: Annotated[int, msgspec.Meta(ge=1, le=MAX_TRIALS)] | None = None
    seed: int = 0
    metric: str
    mode: Mode = "min"
    early_stop: EarlyStop | None = None
    warmup_steps: Annotated[int, msgspec.Meta(ge=0)] = 2
    min_trials: Annotated[int, msgspec.Meta(ge=1)] = 2
    min_steps: Annotated[int, msgspec.Meta(ge=1)] = 1
    reduction_factor: Annotated[int, msgspec.Meta(ge=2)] = 3
    max_steps: Annotated[int, msgspec.Meta(ge=1)] = 100
    search: Search | None = None
    parallel: Annotated[int, msgspec.Meta(ge=1, le=MAX_TRIALS)] | None = None


class SweepRef(Params, kw_only=True):
    sweep_id: str


class SweepListParams(Params, kw_only=True):
    limit: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 100


class SweepRegisterParams(Params, kw_only=True):
    """sweeps.register: the sweep's best trial by its metric becomes the next version of name."""

    sweep_id: str
    name: str
    actor: str | None = None


def parse_value(text: str) -> Any:
    """`3` → 3, `1e-3` → 0.001, `true` → True, anything else stays a string."""
    text = text.strip()
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _split_axis(spec: str, what: str) -> tuple[str, str]:
    name, sep, rest = spec.partition("=")
    name = name.strip()
    if not sep or not rest.strip():
        raise Invalid(f"{what} {spec!r} must look like name=values (e.g. lr=1e-3,1e-2)")
    if not _NAME.match(name):
        raise Invalid(f"{what} {spec!r}: {name!r} is not a parameter name")
    return name, rest.strip()


def parse_grid(specs: Sequence[str]) -> dict[str, list[Any]]:
    """`lr=1e-3,1e-2` → {"lr": [0.001, 0.01]}."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, rest = _split_axis(spec, "grid axis")
        values = [v for v in rest.split(",")]
        if any(not v.strip() for v in values):
            raise Invalid(f"grid axis {spec!r} has an empty value")
        if name in grid:
            raise Invalid(f"grid axis {name!r} is given twice")
        grid[name] = [parse_value(v) for v in values]
    return grid


@dataclass(frozen=True)
class Dist:
    """One random axis."""

    kind: str
    args: tuple[Any, ...]

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "uniform":
            return rng.uniform(*self.args)
        if self.kind == "loguniform":
            lo, hi = self.args
            return math.exp(rng.uniform(math.log(lo), math.log(hi)))
        if self.kind == "int":
            return rng.randint(*self.args)
        return rng.choice(self.args)


def parse_dist(spec: str) -> tuple[str, Dist]:
    """`wd=loguniform(1e-5,1e-2)` → ("wd", Dist)."""
    name, rest = _split_axis(spec, "random axis")
    match = _DIST.match(rest.replace(" ", ""))
    if not match:
        raise Invalid(
            f"random axis {spec!r}: write uniform(a,b), loguniform(a,b), int(a,b) or choice(v1,v2,...)"
        )
    kind, body = match.groups()
    args = tuple(parse_value(v) for v in body.split(",")) if body else ()
    if kind == "choice":
        if not args:
            raise Invalid(f"random axis {spec!r}: choice needs at least one value")
        return name, Dist(kind, args)
    if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
        raise Invalid(f"random axis {spec!r}: {kind} takes two numbers, low and high")
    lo, hi = args
    if not lo < hi:
        raise Invalid(f"random axis {spec!r}: low must be below high")
    if kind == "loguniform" and lo <= 0:
        raise Invalid(f"random axis {spec!r}: loguniform needs low > 0")
    if kind == "int" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise Invalid(f"random axis {spec!r}: int takes whole numbers")
    return name, Dist(kind, (lo, hi))


def parse_random(specs: Sequence[str]) -> dict[str, Dist]:
    out: dict[str, Dist] = {}
    for spec in specs:
        name, dist = parse_dist(spec)
        if name in out:
            raise Invalid(f"random axis {name!r} is given twice")
        out[name] = dist
    return out


def trials(
    grid: Mapping[str, Sequence[Any]],
    rand: Mapping[str, Dist],
    n: int | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Every grid point (repeated to reach n when random axes are given), each with its random draws."""
    overlap = set(grid) & set(rand)
    if overlap:
        raise Invalid(f"parameter(s) {', '.join(sorted(overlap))} are both grid and random axes")
    if not grid and not rand:
        raise Invalid("a sweep needs at least one --grid or --random axis")
    names = list(grid)
    points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]
    if n is None:
        n = len(points)
    if n < 1:
        raise Invalid("--trials must be at least 1")
    if not rand and n > len(points):
        n = len(points)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        trial = dict(points[i % len(points)])
        for name, dist in rand.items():
            trial[name] = dist.sample(rng)
        out.append(trial)
    return out


def check_search(
    grid: Mapping[str, Sequence[Any]],
    rand: Mapping[str, Dist],
    search: str | None,
    early_stop: str | None,
    parallel: int | None,
) -> None:
    """The options that only an Optuna search takes, and the space its grid sampler can walk."""
    if search is None:
        if early_stop == "hyperband":
            raise Invalid("--early-stop hyperband is Optuna's HyperbandPruner: add --search "
                          "tpe|cmaes|random|grid")
        if parallel is not None:
            raise Invalid("--parallel is for --search: mldeck's own grid and random queue every trial "
                          "at once")
    elif search == "grid" and rand:
        raise Invalid(f"--search grid walks --grid axes only; {', '.join(sorted(rand))} "
                      "is a --random axis (use --search tpe, cmaes or random)")


def usable(value: float | None) -> bool:
    """Whether a value of a sweep's metric is one to judge or rank a trial by: NaN and the infinities are
    no measurement (a trial that diverged), so never a reference for the others nor anyone's best."""
    return value is not None and math.isfinite(value)


def _better(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "min" else a > b


def best_so_far(values: Sequence[float], mode: str) -> float:
    return min(values) if mode == "min" else max(values)


@dataclass(frozen=True)
class Decision:
    """Whether a trial should stop now, and the sentence that says why."""

    stop: bool
    reason: str = ""


CONTINUE = Decision(False)


def median_rule(
    trial: Sequence[tuple[int, float]],
    others: Sequence[Sequence[tuple[int, float]]],
    mode: str,
    warmup_steps: int = 2,
    min_trials: int = 2,
) -> Decision:
    """Stop if the trial's best so far is worse than the median of the other trials' running
    averages at the same step (other trials must have reached that step)."""
    if not trial:
        return CONTINUE
    step = trial[-1][0]
    if step < warmup_steps:
        return CONTINUE
    best = best_so_far([v for _, v in trial], mode)
    averages = []
    for other in others:
        upto = [v for s, v in other if s <= step]
        if upto and other[-1][0] >= step:
            averages.append(sum(upto) / len(upto))
    if len(averages) < min_trials:
        return CONTINUE
    median = statistics.median(averages)
    if _better(median, best, mode):
        return Decision(
            True, f"median rule: best {best:.4g} at step {step} is worse than the median "
            f"{median:.4g} of {len(averages)} other trials' running averages",
        )
    return CONTINUE


def asha_rungs(min_steps: int, reduction_factor: int, max_steps: int) -> list[int]:
    """Rung steps min_steps·η^k below max_steps."""
    if min_steps < 1 or reduction_factor < 2:
        raise Invalid("ASHA needs min_steps ≥ 1 and reduction_factor ≥ 2")
    rungs, r = [], min_steps
    while r < max_steps:
        rungs.append(r)
        r *= reduction_factor
    return rungs


def asha_rule(
    value: float, rung_values: Sequence[float], mode: str, reduction_factor: int
) -> bool:
    """At a rung: keep the trial if its value is in the top 1/η of the values recorded there
    (itself included); with fewer than η values, only the best so far continues."""
    competing = sorted([*rung_values, value], reverse=(mode == "max"))
    keep_index = max(0, len(competing) // reduction_factor - 1)
    cutoff = competing[keep_index]
    return not _better(cutoff, value, mode)


@dataclass
class AshaState:
    """The values each rung has recorded, and which trial reached which rung."""

    rungs: list[int]
    reduction_factor: int
    mode: str
    recorded: dict[int, dict[str, float]]

    @classmethod
    def new(cls, min_steps: int, reduction_factor: int, max_steps: int, mode: str) -> AshaState:
        rungs = asha_rungs(min_steps, reduction_factor, max_steps)
        return cls(rungs, reduction_factor, mode, {r: {} for r in rungs})

    def report(self, run_id: str, step: int, value: float) -> Decision:
        """Record a trial's value at every rung it has now passed; stop it at the first it fails."""
        for rung in self.rungs:
            if step < rung or run_id in self.recorded[rung]:
                continue
            others = list(self.recorded[rung].values())
            self.recorded[rung][run_id] = value
            if not asha_rule(value, others, self.mode, self.reduction_factor):
                return Decision(
                    True, f"ASHA: {value:.4g} at rung step {rung} is not in the top "
                    f"1/{self.reduction_factor} of {len(others) + 1} trials there",
                )
        return CONTINUE


# the sweeps table ---------------------------------------------------------------


def insert_sweep(store: Store, sweep: dict[str, Any]) -> None:
    store.cur().execute(
        "INSERT INTO sweeps (sweep_id, name, experiment, spec, metric, mode, early_stop, status, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?)",
        [sweep["sweep_id"], sweep["name"], sweep["experiment"], json.dumps(sweep["spec"]),
         sweep["metric"], sweep["mode"], sweep["early_stop"], sweep["created_at"]],
    )


def _decode_sweep(row: dict[str, Any]) -> dict[str, Any]:
    if isinstance(row.get("spec"), str):
        row["spec"] = json.loads(row["spec"])
    return row


def get_sweep(store: Store, sweep_id: str) -> dict[str, Any] | None:
    rows = rows_as_dicts(store.cur().execute("SELECT * FROM sweeps WHERE sweep_id = ?", [sweep_id]))
    return _decode_sweep(rows[0]) if rows else None


def list_sweeps(store: Store, limit: int, status: str | None = None) -> list[dict[str, Any]]:
    cur = store.cur().execute(
        "SELECT * FROM sweeps WHERE ? IS NULL OR status = ? ORDER BY created_at DESC LIMIT ?",
        [status, status, limit],
    )
    return [_decode_sweep(r) for r in rows_as_dicts(cur)]


def finish_sweep(store: Store, sweep_id: str, at: float) -> None:
    store.cur().execute(
        "UPDATE sweeps SET status = 'done', ended_at = ? WHERE sweep_id = ?", [at, sweep_id]
    )


def _best(mode: str) -> str:
    """A trial's best value of the metric from its summary (whose min and max leave NaN out), as a trial
    that reported it says it: NaN when every value was NaN, so that it never reads as "not reported"."""
    column = "m.min_value" if mode == "min" else "m.max_value"
    return f"CASE WHEN m.run_id IS NOT NULL THEN coalesce({column}, 'NaN'::DOUBLE) END"


def _numbers_only(store: Store, rows: list[dict[str, Any]], metric: str, mode: str) -> None:
    """Each row whose best is an infinity (the summary's min or max takes one) gets its best value that is a
    number instead, from its points; one with none keeps its infinity (no usable best). Only a trial that
    overflowed is looked for among the points: the cost stays one of trials."""
    infinite = {row["run_id"]: row for row in rows if row["best"] is not None and math.isinf(row["best"])}
    for run_id, points in metric_history(store, list(infinite), metric).items():
        infinite[run_id]["best"] = best_so_far([value for _, value in points], mode)


def sweep_trials(store: Store, sweep_id: str, metric: str, mode: str) -> list[dict[str, Any]]:
    """A sweep's trials, ranked by their best value of the metric that is a number (the ones without one
    last, oldest first: unreported, or NaN or infinite at every step), from the runs' summaries."""
    best = _best(mode)
    cur = store.cur().execute(
        f"""
        SELECT r.run_id, r.name, r.status, r.status_reason, r.params, r.cost_usd, {best} AS best, m.last_step
        FROM runs r LEFT JOIN metric_summary m ON m.run_id = r.run_id AND m.key = ?
        WHERE r.sweep_id = ? ORDER BY r.created_at
        """,
        [metric, sweep_id],
    )
    rows = rows_as_dicts(cur)
    _numbers_only(store, rows, metric, mode)
    sign = 1.0 if mode == "min" else -1.0
    rows.sort(key=lambda row: (0, sign * row["best"]) if usable(row["best"]) else (1, 0.0))
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
        if isinstance(row.get("params"), str):
            row["params"] = json.loads(row["params"])
    return rows


def objective(store: Store, run_id: str, metric: str, mode: str) -> float | None:
    """A finished trial's result for the search: its best value of the metric, as sweep_trials ranks it
    (NaN or an infinity when no value was a number, None when it never reported the metric)."""
    best = _best(mode)
    row = store.cur().execute(
        f"SELECT {best} FROM metric_summary m WHERE run_id = ? AND key = ?", [run_id, metric]
    ).fetchone()
    if row is None:
        return None
    trial = {"run_id": run_id, "best": float(row[0])}
    _numbers_only(store, [trial], metric, mode)
    return trial["best"]


def best_trial(trials: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The best of sweep_trials' ranked rows among the trials that ran to the end (pruned, stopped and
    failed ones are unfinished models), or None when none did with a best value of the metric that is a
    number."""
    return next((t for t in trials if t["status"] == "succeeded" and usable(t["best"])), None)


def metric_history(store: Store, run_ids: list[str], key: str) -> dict[str, list[tuple[int, float]]]:
    """Each run's (step, value) points of one metric that are numbers (see usable), for early stopping after
    an agent restart as the live rules take them; only the runs whose summary says they reported it are
    looked for among the points."""
    reported = [r[0] for r in store.cur().execute(
        "SELECT run_id FROM metric_summary WHERE key = ? AND run_id IN (SELECT unnest(?))",
        [key, run_ids]).fetchall()] if run_ids else []
    if not reported:
        return {}
    cur = store.cur().execute(
        "SELECT run_id, step, value FROM metrics WHERE key = ? AND run_id IN (SELECT unnest(?)) "
        "AND isfinite(value) ORDER BY run_id, step",
        [key, reported],
    )
    out: dict[str, list[tuple[int, float]]] = {}
    for run_id, step, value in cur.fetchall():
        out.setdefault(run_id, []).append((step, value))
    return out
