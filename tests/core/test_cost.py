"""Prices by GPU model, config overrides, and cost from GPU- and CPU-seconds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mldeck.core import cost, protocol
from mldeck.core.config import CostSection
from mldeck.core.errors import Invalid
from mldeck.core.store import Store


@pytest.mark.parametrize(
    ("name", "price"),
    [
        ("NVIDIA A100-SXM4-40GB", 3.20), ("Simulated A100-SXM4-40GB", 3.20), ("NVIDIA A100 80GB PCIe", 4.10),
        ("NVIDIA H100 80GB HBM3", 3.90), ("NVIDIA L4", 0.80), ("NVIDIA A10G", 1.01), ("Tesla T4", 0.53),
        ("NVIDIA L40S", 1.86), ("Mystery GPU", 2.00),
    ],
)
def test_default_prices(name: str, price: float) -> None:
    assert cost.default_gpu_price(name)[0] == price
    assert cost.default_gpu_price(name, spot=True)[0] < price


def test_config_overrides() -> None:
    gpu = "NVIDIA A100-SXM4-40GB"
    assert cost.host_prices(gpu, CostSection()).gpu_per_hour == 3.20
    assert cost.host_prices(gpu, CostSection(spot=True)).gpu_per_hour == 1.28
    assert cost.host_prices(gpu, CostSection(gpu_price_per_hour=2.5)).source == "config"
    assert cost.host_prices(gpu, CostSection(prices={"a100": 1.5})).gpu_per_hour == 1.5
    assert cost.host_prices(gpu, CostSection(spot=True, spot_price_per_hour=0.9)).gpu_per_hour == 0.9
    cpu = cost.host_prices(None, CostSection(cpu_core_price_per_hour=0.05))
    assert cpu.gpu_per_hour == 0 and cpu.cpu_core_per_hour == 0.05


def test_run_cost() -> None:
    prices = cost.host_prices("NVIDIA A100-SXM4-40GB", CostSection())
    assert cost.run_cost(2 * 3600, 999, prices) == pytest.approx(6.40)  # 2 GPU-hours; CPU included
    assert cost.run_cost(0, 3600, prices) == pytest.approx(cost.CPU_CORE_PRICE)


def test_held_gpu_seconds_in_a_window(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.duckdb")
    now = time.time()
    store.upsert_run({"run_id": "a", "managed": True, "gpus": [0, 1], "started_at": now - 100,
                      "ended_at": now - 50})
    store.upsert_run({"run_id": "b", "managed": True, "gpus": [0], "started_at": now - 30})
    store.upsert_run({"run_id": "c", "managed": True, "gpus": [], "started_at": now - 30})
    assert cost.held_gpu_seconds(store, now - 60, now) == pytest.approx(2 * 10 + 30)
    assert json.dumps(cost.runs_by_cost(store, now - 1000, 10)[0]["gpus"]) in ("[0, 1]", "[0]", "[]")
    store.close()


def test_cost_params_declare_their_ranges() -> None:
    assert protocol.validate(None, cost.CostParams) == cost.CostParams(since_s=86400.0, limit=100)
    for field, bad in (("since_s", 0), ("since_s", -1.5), ("limit", 0), ("limit", 1_000_001)):
        with pytest.raises(Invalid, match=rf"\$\.{field}"):
            protocol.validate({field: bad}, cost.CostParams)
