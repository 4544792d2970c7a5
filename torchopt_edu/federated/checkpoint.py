"""Server checkpoints: save atomically, load with ``weights_only=True`` and validate.

A checkpoint holds what the next round depends on: the global model, the strategy's state
(server optimizer, control variates), the compressor's error-feedback memory, the number of
completed rounds and the history. Client sampling, local training, attacks and faults draw
their randomness from ``(seed, round, client)`` alone (NumPy ``SeedSequence``), so the seed and
the round number are the whole random state: a run resumed after round ``k`` ends bit-identical
to an uninterrupted one. The run's identity is stored too: the seed, the number of clients, the
fraction, and the ``repr`` of the strategy and of the compressor, which lists their settings
(nested strategies, a server optimizer's learning rate and betas, DP's noise and seed, top-k's
ratio). A checkpoint of another run, or of this run with other settings, is refused, naming
what differs: a resumed run must step exactly as the saved one would have (a server
optimizer's loaded state would otherwise bring back the saved learning rate under a new name).
Version 2 of the format added the settings; a version-1 checkpoint is refused.

Saving writes ``path.tmp``, flushes it to disk and renames it over ``path`` (``os.replace`` is
atomic), after moving the previous checkpoint to ``path.prev``: a crash at any moment leaves a
complete checkpoint behind. Loading reads with ``torch.load(..., weights_only=True)`` (no code
runs) and checks every field before anything is changed; a bad checkpoint raises
:class:`CheckpointError` and the files stay as they are.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from torchopt_edu.federated.aggregate import InvalidUpdateError, check_update

FORMAT = "torchopt-edu federated checkpoint"
VERSION = 2
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
        CheckpointError: unreadable, damaged (a stored checksum does not match), not a
            checkpoint, of another version, of another run (a ``run`` entry differs: the
            strategy's settings, say) or another model, a NaN or infinity in the server or
            compressor state, or inconsistent (a history whose length is not the round).
    """
    _check_checksums(path)
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
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} is a checkpoint of version {state.get('version')!r}; this torchopt-edu reads "
            f"version {VERSION} (since version 2 a checkpoint records the settings of the "
            "strategy and the compressor): resume it with the torchopt-edu that wrote it, or "
            "start a new run"
        )
    if set(state) != KEYS:
        raise CheckpointError(f"{path}: expected the keys {sorted(KEYS)}, got {sorted(state)}")
    if not isinstance(state["run"], dict):
        raise CheckpointError(f"{path}: 'run' must be a dict, got {type(state['run']).__name__}")
    for key, expected in run.items():
        if state["run"].get(key) != expected:
            raise CheckpointError(
                f"{path} belongs to another run: {key} is {state['run'].get(key)!r} there, "
                f"{expected!r} here; resume with the settings it was saved with"
            )
    try:
        check_update(state["model"], model_state, "checkpoint")
    except InvalidUpdateError as error:
        where = f"tensor {error.tensor!r}: " if error.tensor is not None else ""
        raise CheckpointError(f"{path}: the model does not fit: {where}{error.problem}") from None
    for part in ("strategy", "compressor"):
        where = _non_finite_tensor(state[part], part)
        if where is not None:
            raise CheckpointError(
                f"{path}: {where} holds NaN or infinite values; a run resumed from it would "
                "refuse every later round"
            )
    history = state["history"]
    if not isinstance(history, list) or len(history) != state["round"]:
        raise CheckpointError(
            f"{path}: round {state['round']!r} but a history of "
            f"{len(history) if isinstance(history, list) else type(history).__name__} records"
        )
    return state


def _check_checksums(path: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` if a member of the checkpoint's zip archive fails its
    CRC-32 (``torch.load`` does not check them: a flipped bit loads as a wrong weight)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError):
        return  # not a readable zip: torch.load says what is wrong
    if damaged is not None:
        raise CheckpointError(
            f"{path}: {damaged} does not match its stored checksum; the file is corrupted (the "
            "previous checkpoint, if any, is kept at its .prev path)"
        )


def _non_finite_tensor(value: Any, where: str) -> str | None:
    """The path of the first tensor in ``value`` (nested dicts and lists) with a NaN or an
    infinity, or ``None``."""
    if isinstance(value, Tensor):
        if value.is_floating_point() or value.is_complex():
            return None if bool(torch.isfinite(value).all()) else where
        return None
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite_tensor(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None
