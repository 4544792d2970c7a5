"""torchopt-edu's digits experiment as a Flower App: ``flwr run .`` on a running federation.

The ``out`` run-config value, if set, is a path where the ServerApp saves the final global
model and the history (``torch.save``) so that a test can compare them with ``Simulation``'s.
"""

from __future__ import annotations

import torch

from torchopt_edu.federated.flower import (
    Experiment,
    RunConfig,
    client_app,
    digits_experiment,
    server_app,
)


def save(experiment: Experiment, history: list[dict], run_config: RunConfig) -> None:
    """Save the global model and the history to ``run_config["out"]`` (if set)."""
    if run_config.get("out"):
        torch.save({"model": experiment.model.state_dict(), "history": history}, run_config["out"])


server = server_app(digits_experiment, on_finish=save)
client = client_app(digits_experiment)
