"""What the agent and its model server share: the manifest, the log line formats, RPC params, queries.

The agent writes `serving/manifest.json` (which versions to serve under which
alias, and the traffic split); the server watches it and hot-swaps. The server
appends prediction and feedback lines under `serving/<model>/`; the agent
ingests them (one writer). Nothing here imports torch.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
import numpy as np

from mldeck.core.protocol import Params
from mldeck.core.signature import decode_tensors

if TYPE_CHECKING:  # the server process reads the manifest without loading the store's DuckDB
    from mldeck.core.store import Store

MANIFEST_FILE = "manifest.json"
ALERTS_FILE = "alerts.jsonl"
STATS_PATH = "/mldeck/stats"
PREDICTIONS_GLOB = "serving/*/predictions-*.jsonl"
FEEDBACK_GLOB = "serving/*/feedback-*.jsonl"
ALERTS_GLOB = f"serving/{ALERTS_FILE}"
CHALLENGER = "challenger"
PRODUCTION = "production"


class ServedVersion(msgspec.Struct, frozen=True):
    """One version the server must hold, and the model folder it loads from."""

    version: int
    artifact: str


class ServedModel(msgspec.Struct, kw_only=True):
    """A model's aliases as the registry holds them, and how traffic is split between them."""

    aliases: dict[str, ServedVersion] = {}
    shadow: bool = False
    canary: float = 0.0


class Manifest(msgspec.Struct, kw_only=True):
    """The whole of `serving/manifest.json`: written by the agent, read by the server."""

    written_at: float = 0.0
    models: dict[str, ServedModel] = {}


def read_manifest(path: Path) -> Manifest:
    """The manifest on disk, or an empty one when there is none yet."""
    if not path.exists():
        return Manifest()
    return msgspec.json.decode(path.read_bytes(), type=Manifest)


def encode_manifest(manifest: Manifest) -> bytes:
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


class PredictionLine(msgspec.Struct, kw_only=True):
    """One answered request in `predictions-<n>.jsonl`; inputs and outputs map tensor name → rows."""

    ts: float
    model: str
    version: int
    variant: str
    request_id: str
    inputs: Any
    outputs: Any
    latency_ms: float


class PredictionRow(msgspec.Struct, kw_only=True):
    """The same line as the ingest reads it: tensors stay raw JSON, straight into JSON columns."""

    ts: float
    model: str
    version: int
    variant: str
    request_id: str
    inputs: msgspec.Raw
    outputs: msgspec.Raw
    latency_ms: float


class FeedbackLine(msgspec.Struct, kw_only=True):
    """Delayed ground truth for an earlier request, from `POST /v2/models/{name}/feedback`."""

    ts: float
    model: str
    request_id: str
    label: Any


class FeedbackRow(msgspec.Struct, kw_only=True):
    ts: float
    model: str
    request_id: str
    label: msgspec.Raw


class AlertLine(msgspec.Struct, kw_only=True):
    """A server-side problem worth a person's attention (a version that failed to load)."""

    alert_id: str
    ts: float
    model: str
    version: int | None
    kind: str
    message: str
    details: dict[str, Any] = {}


LABELLED_MAX = 100_000


class TrafficParams(Params):
    name: str
    shadow: bool | None = None
    canary: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None  # percent of requests


class StatsParams(Params):
    window_s: Annotated[float, msgspec.Meta(ge=1, le=60)] = 60.0


class LabelledParams(Params):
    name: str
    since: float | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=LABELLED_MAX)] = 10_000


SEGMENT_NAME = re.compile(r"^(predictions|feedback)-(\d+)\.jsonl$")


# queries (run on the agent) ------------------------------------------------------


def served_aliases(store: Store) -> list[tuple[str, str, int, str]]:
    """Every alias of a non-archived version: (name, alias, version, artifact folder)."""
    return store.cur().execute(
        "SELECT a.name, a.alias, a.version, v.artifact FROM aliases a "
        "JOIN model_versions v ON v.name = a.name AND v.version = a.version "
        "WHERE NOT coalesce(v.archived, false) ORDER BY a.name, a.alias"
    ).fetchall()


def traffic(store: Store) -> dict[str, tuple[bool, float]]:
    """Each model's stored split: name → (shadow, canary percent)."""
    rows = store.cur().execute("SELECT name, shadow, canary FROM serving_traffic").fetchall()
    return {name: (bool(shadow), float(canary or 0.0)) for name, shadow, canary in rows}


def set_traffic(store: Store, name: str, shadow: bool | None, canary: float | None) -> dict[str, Any]:
    """Change what was given, keep the rest; returns the model's split as now stored."""
    with store.transaction() as cur:
        row = cur.execute(
            "SELECT shadow, canary FROM serving_traffic WHERE name = ?", [name]
        ).fetchone()
        old_shadow, old_canary = row if row else (False, 0.0)
        new = {
            "name": name,
            "shadow": old_shadow if shadow is None else shadow,
            "canary": old_canary if canary is None else canary,
        }
        cur.execute(
            "INSERT INTO serving_traffic VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
            "shadow = excluded.shadow, canary = excluded.canary, updated_at = excluded.updated_at",
            [name, new["shadow"], new["canary"], time.time()],
        )
    return new


def model_known(store: Store, name: str) -> bool:
    row = store.cur().execute("SELECT count(*) FROM model_versions WHERE name = ?", [name]).fetchone()
    return bool(row and row[0])


def build_manifest(store: Store, home: Path) -> Manifest:
    """The manifest the store implies: aliases with absolute folders, plus each model's split."""
    models: dict[str, ServedModel] = {}
    for name, alias, version, folder in served_aliases(store):
        artifact = Path(folder or "")
        if not artifact.is_absolute():
            artifact = home / artifact
        models.setdefault(name, ServedModel()).aliases[alias] = ServedVersion(int(version), str(artifact))
    for name, (shadow, canary) in traffic(store).items():
        if name in models:
            models[name].shadow = shadow
            models[name].canary = canary
    return Manifest(written_at=time.time(), models=models)


# A model's latest label per request id (feedback can be sent again to correct it); takes the model.
LATEST_LABELS = (
    "(SELECT request_id, arg_max(label, ts) AS label FROM feedback WHERE model = ? OR model IS NULL "
    "GROUP BY request_id)"
)


def labelled_requests(
    store: Store, name: str, since: float | None, limit: int
) -> list[tuple[float, int, str, str | None, str | None]]:
    """(ts, version, request_id, inputs, latest label) of live requests that got a label, newest first."""
    return [tuple(r) for r in store.cur().execute(  # type: ignore[misc]
        f"SELECT p.ts, p.version, p.request_id, p.inputs, f.label FROM predictions p "
        f"JOIN {LATEST_LABELS} f USING (request_id) "
        "WHERE p.model = ? AND p.variant <> 'shadow' AND p.ts >= ? ORDER BY p.ts DESC LIMIT ?",
        [name, name, since if since is not None else -1.0, limit],
    ).fetchall()]


def labelled_columns(
    rows: list[tuple[float, int, str, str | None, str | None]], layout: dict[str, list[str]]
) -> dict[str, list[Any]]:
    """Labelled requests as one row per example, oldest first: a retraining job's newer data.

    A request of several rows takes a label list of the same length, or one label for all;
    requests whose inputs or label do not fit the layout are left out.
    """
    columns = [c for cols in layout.values() for c in cols]
    out: dict[str, list[Any]] = {c: [] for c in ["ts", "version", "request_id", *columns, "label"]}
    for ts, version, request_id, inputs, label_text in reversed(rows):
        if inputs is None or label_text is None:
            continue
        values = decode_tensors([inputs], layout)
        n = len(values[columns[0]]) if columns else 0
        label = np.asarray(msgspec.json.decode(label_text)).reshape(-1)
        if n == 0 or any(len(values[c]) != n for c in columns) or label.size not in (1, n):
            continue
        out["ts"] += [ts] * n
        out["version"] += [version] * n
        out["request_id"] += [request_id] * n
        for c in columns:
            out[c] += values[c].tolist()
        out["label"] += np.broadcast_to(label, (n,)).tolist()
    return out


def old_segments(serving_dir: Path, keep: int) -> list[Path]:
    """Per model and kind, the log segments older than the newest `keep`: deletable once ingested."""
    groups: dict[tuple[Path, str], list[tuple[int, Path]]] = {}
    for path in serving_dir.glob("*/*.jsonl"):
        match = SEGMENT_NAME.match(path.name)
        if match:
            groups.setdefault((path.parent, match.group(1)), []).append((int(match.group(2)), path))
    return [path for segments in groups.values() for _, path in sorted(segments)[:-keep]]
