"""The steps the monitoring tests share: train and register a test model, then serve it in production."""

from __future__ import annotations

from tests.conftest import AgentProc, rpc, wait_for


def train_and_register(agent: AgentProc, script: str, model: str) -> None:
    """Run the test's training script (it registers version 1 of `model`) and wait for the version."""
    trained = agent.python(script, model, timeout=300)
    assert trained.returncode == 0, trained.stderr
    wait_for(lambda: rpc(agent.home, "models.versions", {"name": model}).get("result"), timeout=120,
             what=f"{model} registered")


def serve_in_production(agent: AgentProc, model: str) -> str:
    """Version 1 of `model` to production and the model server started; its URL."""
    agent.cli("models", "promote", model, "1", "--to", "production", "--yes", check=True)
    return str(agent.cli("serve", "start", "--json", check=True, timeout=240).json()["url"])
