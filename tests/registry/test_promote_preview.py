"""`models.promote` with dry_run: the gates' verdict and metric deltas, with nothing changed or audited."""

from __future__ import annotations

from pathlib import Path

from mldeck.core import registry
from mldeck.core.config import GateSection
from mldeck.core.store import Store
from tests.registry.test_rules import add_version, store  # noqa: F401 (store is a fixture)


def test_preview_judges_like_promote_and_changes_nothing(store: Store, tmp_path: Path) -> None:  # noqa: F811
    add_version(store, tmp_path, "m", "r1", {"val_acc": 0.95, "loss": 0.2})
    add_version(store, tmp_path, "m", "r2", {"val_acc": 0.90, "loss": 0.3})
    gate = GateSection(metrics=["val_acc >= 0.92"])
    registry.promote(store, "m", 1, "production", "tester", gate)
    audited = len(registry.audit_rows(store, "m"))

    worse = registry.preview_promotion(store, "m", 2, "production", gate)
    assert worse["dry_run"] and not worse["changed"] and not worse["would_change"]
    assert worse["from_version"] == 1
    assert worse["failed_gates"] == registry.evaluate_gate(
        gate, "production", registry._version(store.cur(), "m", 2), registry._version(store.cur(), "m", 1),
        set(), [])
    assert any("val_acc" in f and "0.9" in f for f in worse["failed_gates"])
    assert abs(worse["deltas"]["val_acc"]["delta"] - (0.90 - 0.95)) < 1e-9
    assert (worse["deltas"]["loss"]["candidate"], worse["deltas"]["loss"]["current"]) == (0.3, 0.2)

    fine = registry.preview_promotion(store, "m", 2, "staging", None)
    assert fine["would_change"] and fine["failed_gates"] == [] and fine["from_version"] is None
    assert fine["deltas"]["val_acc"]["current"] is None

    assert registry.alias_version(store.cur(), "m", "production") == 1
    assert registry.alias_version(store.cur(), "m", "staging") is None
    assert len(registry.audit_rows(store, "m")) == audited
