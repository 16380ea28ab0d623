"""Pipelines: a TOML file of steps run as jobs in order, ending in a registration gate.

    name = "demo-retrain"
    model = "demo"                        # the registered model's name
    cwd = "."                             # optional; relative to the file's folder

    [steps.train]                         # steps: data, preprocess, train, evaluate (train required)
    command = ["python", "-m", "mldeck.agent.demo.train", "--epochs", "5"]
    gpus = 0                              # optional; also env = {...}

    [register]
    step = "train"                        # whose run's model folder is registered (default train)
    artifact = "artifacts/model"          # inside that run's folder (default)
    gate = "val_acc >= 0.9"               # METRIC OP NUMBER, joined by `and`; never eval'd
    promote = "challenger"                # optional: staging or challenger

Each step's job sees MLDECK_PIPELINE_ID and MLDECK_STEP_<NAME>_DIR for every earlier step, so
artifacts pass by run folder. The gate reads the latest metrics of the train and evaluate runs
(evaluate wins on a shared key).
"""

from __future__ import annotations

import json
import re
import sys
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec

from mldeck.core import registry
from mldeck.core.errors import Invalid
from mldeck.core.protocol import Params
from mldeck.core.rules import MetricRule, parse_rule
from mldeck.core.store import Store, decode_json_fields, rows_as_dicts

STEP_ORDER = ("data", "preprocess", "train", "evaluate")
PROMOTABLE = ("staging", "challenger")
MAX_FILE_BYTES = 256 * 1024
_PYTHON = re.compile(r"^(.*/)?python(3(\.\d+)?)?$")
_AND = re.compile(r"\s+and\s+|\s*&&\s*", re.IGNORECASE)


class PipelineError(Invalid):
    """A pipeline that cannot run; the message names the file, line and field where it can."""


class Step(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    command: list[str]
    gpus: int = 0
    env: dict[str, str] = msgspec.field(default_factory=dict)


class Register(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    step: str = "train"
    artifact: str = "artifacts/model"
    gate: str | None = None
    promote: str | None = None


class PipelineSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    model: str | None = None
    cwd: str | None = None
    experiment: str = "pipelines"
    steps: dict[str, Any]
    register: Register | None = None


class PipelineRunParams(Params):
    file: str | None = None
    spec: Annotated[str, msgspec.Meta(max_length=MAX_FILE_BYTES)] | None = None
    trigger: dict[str, Any] | None = None
    actor: str | None = None


class PipelineRef(Params):
    pipeline_id: str


class PipelineListParams(Params):
    limit: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100


# parsing ----------------------------------------------------------------------------------


def _line_of(text: str, table: str, key: str | None) -> int | None:
    """The line of `key` inside `[table]` (or the table's header), for error messages."""
    current, header = "", None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("[") and not line.startswith("[["):
            current = line.strip("[]").strip().replace('"', "")
            if current == table:
                header = number
            continue
        if current == table and key is not None and re.match(rf"^\"?{re.escape(key)}\"?\s*=", line):
            return number
    return header


def _where(source: str, text: str, table: str, path: str) -> str:
    """`file, line N (field a.b.c)` for a msgspec error path like `$.command[0]`."""
    field = ".".join(filter(None, [table, path.removeprefix("$").lstrip(".")]))
    parts = re.sub(r"\[[^]]*\]", "", field).split(".")
    line = _line_of(text, ".".join(parts[:-1]), parts[-1]) if field else None
    return f"{source}, line {line} ({field})" if line else f"{source} ({field or 'top level'})"


def _convert(obj: Any, kind: type[Any], source: str, text: str, table: str) -> Any:
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `")
        path = path.rstrip("`")
        unknown = re.search(r"unknown field `([^`]+)`", message)
        if unknown:
            path = f"{path}.{unknown[1]}"
        raise PipelineError(f"{_where(source, text, table, path)}: {message}") from None


def parse_gate(text: str) -> list[MetricRule]:
    """`val_acc >= 0.92 and val_loss < 0.3` → rules; parsed by pattern, never evaluated as code."""
    if not isinstance(text, str) or not text.strip():
        raise PipelineError("the gate is empty; write it as METRIC OP NUMBER, e.g. \"val_acc >= 0.92\"")
    rules = []
    for clause in _AND.split(text.strip()):
        try:
            rules.append(parse_rule(clause))
        except ValueError as exc:
            raise PipelineError(str(exc) + ("" if clause == text else f" in gate {text!r}")) from None
    return rules


def check_gate(text: str, metrics: dict[str, float], name: str) -> list[str]:
    """Each failed clause of the gate as a sentence with its numbers (empty: the gate holds)."""
    from mldeck.core.config import GateSection

    gate = GateSection(metrics=[str(r) for r in parse_gate(text)])
    return registry.evaluate_gate(gate, "registration", {"name": name, "version": 0, "metrics": metrics},
                                  None, set(), [])


def parse_pipeline(text: str, source: str = "pipeline") -> tuple[PipelineSpec, dict[str, Step]]:
    """Check a pipeline file completely before anything runs; steps come back in run order."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PipelineError(f"{source}: not valid TOML: {exc}") from None
    spec: PipelineSpec = _convert(raw, PipelineSpec, source, text, "")
    if not isinstance(spec.steps, dict) or not spec.steps:
        raise PipelineError(f"{source}: no [steps.NAME] tables; a pipeline needs at least [steps.train]")
    unknown = [s for s in spec.steps if s not in STEP_ORDER]
    if unknown:
        line = _line_of(text, f"steps.{unknown[0]}", None)
        raise PipelineError(
            f"{source}{f', line {line}' if line else ''}: unknown step {unknown[0]!r}; steps are "
            f"{', '.join(STEP_ORDER)} (they run in that order)"
        )
    steps: dict[str, Step] = {}
    for name in STEP_ORDER:
        if name in spec.steps:
            step = _convert(spec.steps[name], Step, source, text, f"steps.{name}")
            try:
                launch_target(step.command)
            except PipelineError as exc:
                raise PipelineError(f"{_where(source, text, f'steps.{name}', '$.command')}: {exc}") from None
            if step.gpus < 0:
                where = _where(source, text, f"steps.{name}", "$.gpus")
                raise PipelineError(f"{where}: gpus must be 0 or more")
            steps[name] = step
    reg = spec.register
    if reg is not None:
        if spec.model is None:
            raise PipelineError(f"{source}: [register] needs `model = \"NAME\"` at the top of the file")
        try:
            registry.check_model_name(spec.model)
        except Invalid as exc:
            raise PipelineError(f"{_where(source, text, '', '$.model')}: {exc}") from None
        if reg.step not in steps:
            raise PipelineError(f"{_where(source, text, 'register', '$.step')}: step {reg.step!r} is not "
                                f"in this pipeline (it has {', '.join(steps)})")
        if reg.gate is not None:
            try:
                parse_gate(reg.gate)
            except PipelineError as exc:
                raise PipelineError(f"{_where(source, text, 'register', '$.gate')}: {exc}") from None
        if reg.promote is not None and reg.promote not in PROMOTABLE:
            raise PipelineError(f"{_where(source, text, 'register', '$.promote')}: a pipeline promotes to "
                                f"{' or '.join(PROMOTABLE)} only, not {reg.promote!r} (production is a "
                                "person's decision: `mldeck models promote`)")
        if Path(reg.artifact).is_absolute() or ".." in Path(reg.artifact).parts:
            raise PipelineError(f"{_where(source, text, 'register', '$.artifact')}: artifact is a path "
                                "inside the step's run folder, like artifacts/model")
    elif spec.model is not None:
        raise PipelineError(f"{source}: `model` is set but there is no [register] table to register it")
    return spec, steps


def read_pipeline(path: Path) -> tuple[PipelineSpec, dict[str, Step], str]:
    """Read and check a pipeline file; returns its text too (stored with the pipeline run)."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise PipelineError(f"{path} is over {MAX_FILE_BYTES // 1024} KiB; a pipeline file is small")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"cannot read pipeline file {path}: {exc}") from None
    spec, steps = parse_pipeline(text, str(path))
    return spec, steps, text


def launch_target(argv: list[str]) -> dict[str, Any]:
    """A step's argv as runs.launch fields: `python -m MODULE ARGS` or `[python] SCRIPT.py ARGS`."""
    if not argv or not all(isinstance(a, str) and a for a in argv):
        raise PipelineError("command must be a non-empty list of non-empty strings (an argv)")
    rest = argv[1:] if _PYTHON.match(argv[0]) or argv[0] == sys.executable else argv
    if len(rest) >= 2 and rest[0] == "-m":
        return {"module": rest[1], "args": rest[2:]}
    if rest and rest[0].endswith(".py"):
        return {"script": rest[0], "args": rest[1:]}
    raise PipelineError(
        f"command {argv[:3]} must be `python -m MODULE ...` or `python SCRIPT.py ...`: jobs run Python"
    )


def step_env(pipeline_id: str, trigger: dict[str, Any] | None, done: dict[str, str]) -> dict[str, str]:
    """What a step's job is told: the pipeline, its trigger, and the run folder of each earlier step."""
    env = {"MLDECK_PIPELINE_ID": pipeline_id}
    if trigger and trigger.get("alert_id"):
        env["MLDECK_PIPELINE_ALERT"] = str(trigger["alert_id"])
    for name, run_dir in done.items():
        env[f"MLDECK_STEP_{name.upper()}_DIR"] = run_dir
    return env


# queries -----------------------------------------------------------------------------------

_JSON = ("spec", "trigger", "steps", "gate_failed")


def insert_pipeline(store: Store, row: dict[str, Any], run: dict[str, Any]) -> None:
    """The pipeline's row and its parent run (what lineage walks up to), together."""
    with store.transaction() as cur:
        cols = list(row)
        names = ", ".join(f'"{c}"' for c in cols)
        cur.execute(
            f"INSERT INTO pipelines ({names}) "
            f"VALUES ({', '.join('?' * len(cols))})",
            [json.dumps(row[c]) if c in _JSON else row[c] for c in cols],
        )
        store.upsert_run(run)


def update_pipeline(store: Store, pipeline_id: str, **fields: Any) -> None:
    """Record progress; a final status also ends the pipeline's run row."""
    sets = ", ".join(f'"{k}" = ?' for k in fields)
    with store.transaction() as cur:
        cur.execute(f"UPDATE pipelines SET {sets} WHERE pipeline_id = ?",
                    [*(json.dumps(v) if k in _JSON else v for k, v in fields.items()), pipeline_id])
        if "status" in fields and fields["status"] != "running":
            run_status = "succeeded" if fields["status"] == "succeeded" else "failed"
            store.upsert_run({"run_id": pipeline_id, "status": run_status, "ended_at": time.time(),
                              "status_reason": fields.get("message")})


def get_pipeline(store: Store, pipeline_id: str) -> dict[str, Any] | None:
    rows = rows_as_dicts(store.cur().execute("SELECT * FROM pipelines WHERE pipeline_id = ?", [pipeline_id]))
    return decode_json_fields(rows[0], _JSON) if rows else None


def list_pipelines(store: Store, limit: int) -> list[dict[str, Any]]:
    rows = rows_as_dicts(store.cur().execute(
        "SELECT * EXCLUDE (spec) FROM pipelines ORDER BY created_at DESC LIMIT ?", [limit]
    ))
    return [decode_json_fields(r, _JSON) for r in rows]


def set_lineage(store: Store, run_id: str, parent_run_id: str, tags: dict[str, str]) -> None:
    """A step's run points at its pipeline run, and is tagged with the pipeline and its trigger."""
    run = store.get_run(run_id) or {}
    store.upsert_run({"run_id": run_id, "parent_run_id": parent_run_id,
                      "tags": {**(run.get("tags") or {}), **tags}})
