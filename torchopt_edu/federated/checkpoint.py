"""Server checkpoints: save atomically, load with ``weights_only=True`` and validate.

A checkpoint holds what the next round depends on: the global model, the strategy's state
(server optimizer, control variates), the compressor's error-feedback memory, the number of
completed rounds and the history. Client sampling, local training, attacks and faults draw
their randomness from ``(seed, round, client)`` alone (NumPy ``SeedSequence``), so the seed and
the round number are the whole random state: a run resumed after round ``k`` ends bit-identical
to an uninterrupted one. The run's identity (seed, number of clients, fraction, strategy) is
stored too, and a checkpoint of another run is refused.

Saving writes ``path.tmp``, flushes it to disk and renames it over ``path`` (``os.replace`` is
atomic), after moving the previous checkpoint to ``path.prev``: a crash at any moment leaves a
complete checkpoint behind. Loading reads with ``torch.load(..., weights_only=True)`` (no code
runs) and checks every field before anything is changed; a bad checkpoint raises
:class:`CheckpointError` and the files stay as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.federated.aggregate import InvalidUpdateError, check_update

FORMAT = "torchopt-edu federated checkpoint"
VERSION = 1
KEYS = {"format", "version", "run", "round", "model", "strategy", "compressor", "history"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run and model."""


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically (write ``path.tmp``, fsync, rename); the
    checkpoint it replaces becomes ``path.prev``. Returns ``path``."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("wb") as file:
        torch.save(dict(state), file)
        file.flush()
        os.fsync(file.fileno())
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(temporary, path)
    return path


def read_checkpoint(
    path: str | os.PathLike[str], run: Mapping[str, Any], model_state: Mapping[str, Tensor]
) -> dict[str, Any]:
    """Load the checkpoint at ``path`` and check it against ``run`` (the run's identity) and
    ``model_state`` (keys, shapes, dtypes, finite values); return it.

    Raises:
        CheckpointError: unreadable, not a checkpoint, of another run or another model, or
            inconsistent (a history whose length is not the round).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None
    except Exception as error:  # a truncated or overwritten file fails in many ways
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {error}); it is corrupted "
            "or not a checkpoint (the previous one, if any, is kept at its .prev path)"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT}")
    if state.get("version") != VERSION or set(state) != KEYS:
        raise CheckpointError(
            f"{path}: expected version {VERSION} with keys {sorted(KEYS)}, got version "
            f"{state.get('version')!r} with keys {sorted(state)}"
        )
    for key, expected in run.items():
        if state["run"].get(key) != expected:
            raise CheckpointError(
                f"{path} belongs to another run: {key} is {state['run'].get(key)!r} there, "
                f"{expected!r} here"
            )
    try:
        check_update(state["model"], model_state, "checkpoint")
    except InvalidUpdateError as error:
        where = f"tensor {error.tensor!r}: " if error.tensor is not None else ""
        raise CheckpointError(f"{path}: the model does not fit: {where}{error.problem}") from None
    history = state["history"]
    if not isinstance(history, list) or len(history) != state["round"]:
        raise CheckpointError(
            f"{path}: round {state['round']!r} but a history of "
            f"{len(history) if isinstance(history, list) else type(history).__name__} records"
        )
    return state
