"""Property-based tests of the optimizers' public API (hypothesis).

Random shapes (0-d, zero-size, 1-D, 2-D, 4-D), dtypes, memory layouts (transposed,
channels_last, storage offsets, gradients whose strides differ from their parameter's),
param-group splits, parameters without gradients at some steps, hyper-parameters (floats,
tensors, 0/1 flags) and implementation paths, checked against torch.optim (our own reference
loop for Yogi); state_dict round trips through ``torch.save``/``torch.load(weights_only=True)``;
and corrupted state dicts, which must be refused with a clear error and no change.

Corrupted-state checks run in a forked child per example: a load that corrupts memory
(a wrongly shaped state fed to a fused kernel can crash the interpreter) becomes a test
failure naming the signal, and hypothesis still shrinks it in the parent.

Profiles (conftest.py): "ci" by default (derandomized, few examples), ``HYPOTHESIS_PROFILE=long``
for a deeper search.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _strategies import (
    FAMILIES,
    assert_same_run,
    copy_params,
    make_params,
    our_optimizer,
    paths_for,
    problems,
    reference_optimizer,
    run,
    use_reference_loop,
)
from hypothesis import given
from hypothesis import strategies as st
from torch.optim import Optimizer

# ---------------------------------------------------------------------------------------
# every path, every layout: same numbers as the reference


@pytest.mark.parametrize("family", list(FAMILIES))
@given(data=st.data())
def test_every_path_matches_the_reference(family, data):
    problem = data.draw(problems([family]), label="problem")
    params = make_params(problem)
    reference_params = copy_params(params, problem)
    try:
        reference = reference_optimizer(reference_params, problem)
    except ValueError as refusal:  # e.g. torch.optim refuses betas of one float, one tensor
        with pytest.raises(ValueError):
            our_optimizer(params, problem)
        for p, q in zip(params, reference_params, strict=True):  # nothing changed
            assert p.stride() == q.stride() and torch.equal(p, q), f"{refusal}: changed {p}"
        return
    optimizer = our_optimizer(params, problem)
    run(problem, [optimizer, reference], [params, reference_params], range(problem.steps))
    twin = "torch.optim twin" if FAMILIES[family].twin else "our foreach=False loop"
    assert_same_run(params, optimizer, reference_params, reference, problem, f"vs {twin}")


# ---------------------------------------------------------------------------------------
# state_dict round trips


def _through_a_file(state_dict: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("family", list(FAMILIES))
@given(data=st.data())
def test_state_dict_round_trip_resumes_exactly(family, data):
    """Save after k steps, load into fresh optimizers (ours on any path, torch's twin), go on.

    The resumed runs must give the numbers of the uninterrupted run. The saver is ours or,
    where one exists, torch's twin (a torch.optim state dict loads into ours).
    """
    problem = data.draw(problems([family], min_steps=2, odd_types=False), label="problem")
    saved_after = data.draw(st.integers(1, problem.steps - 1), label="saved_after")
    has_twin = FAMILIES[family].twin is not None
    saver_kind = data.draw(
        st.sampled_from(["ours", "twin"] if has_twin else ["ours"]), label="saver"
    )
    resume_path = data.draw(
        st.sampled_from(paths_for(FAMILIES[family], problem.kwargs)), label="resume_path"
    )

    params = make_params(problem)
    uninterrupted = our_optimizer(params, problem)
    run(problem, [uninterrupted], [params], range(problem.steps))

    saver_params = make_params(problem)
    saver = (our_optimizer if saver_kind == "ours" else reference_optimizer)(saver_params, problem)
    run(problem, [saver], [saver_params], range(saved_after))
    saved = saver.state_dict()

    resumed_params = copy_params(saver_params, problem)
    resumed = our_optimizer(resumed_params, problem, resume_path)
    resumed.load_state_dict(_through_a_file(saved))
    resumed_runs: list[tuple[list[torch.Tensor], Optimizer, str]] = [
        (resumed_params, resumed, f"ours on {resume_path} resumed from {saver_kind}")
    ]
    if has_twin:
        twin_params = copy_params(saver_params, problem)
        twin = reference_optimizer(twin_params, problem)
        twin.load_state_dict(_through_a_file(saved))
        use_reference_loop(twin)
        resumed_runs.append((twin_params, twin, f"torch twin resumed from {saver_kind}"))

    run(
        problem,
        [r[1] for r in resumed_runs],
        [r[0] for r in resumed_runs],
        range(saved_after, problem.steps),
    )
    for resumed_params, resumed, what in resumed_runs:
        assert_same_run(
            resumed_params,
            resumed,
            params,
            uninterrupted,
            problem,
            f"{what} after {saved_after} steps vs uninterrupted",
        )


@pytest.mark.parametrize(("source", "target"), [("Adam", "AdamW"), ("AdamW", "Adam")])
@given(data=st.data())
def test_adam_and_adamw_state_dicts_load_into_each_other_like_torch(source, target, data):
    """Loading one's state dict into the other behaves as in torch.optim (AdamW stays AdamW)."""
    problem = data.draw(
        problems([target], min_steps=2, max_steps=3, odd_types=False), label="problem"
    )
    source_kwargs = {k: v for k, v in problem.kwargs.items() if k != "decoupled_weight_decay"}
    source_problem = dataclasses.replace(problem, family=source, kwargs=source_kwargs)
    saved_after = data.draw(st.integers(1, problem.steps - 1), label="saved_after")
    saver_params = make_params(problem)
    saver = our_optimizer(saver_params, source_problem)
    run(problem, [saver], [saver_params], range(saved_after))
    saved = _through_a_file(saver.state_dict())

    ours_params = copy_params(saver_params, problem)
    twin_params = copy_params(saver_params, problem)
    loaded = our_optimizer(ours_params, problem)
    twin = reference_optimizer(twin_params, problem)
    loaded.load_state_dict(copy.deepcopy(saved))
    twin.load_state_dict(copy.deepcopy(saved))
    use_reference_loop(twin)
    run(problem, [loaded, twin], [ours_params, twin_params], range(saved_after, problem.steps))
    assert_same_run(
        ours_params,
        loaded,
        twin_params,
        twin,
        problem,
        f"{source} state dict loaded into {target}: ours vs torch",
    )


# ---------------------------------------------------------------------------------------
# flat buffers and parameters that share memory


@pytest.mark.parametrize("family", list(FAMILIES))
@given(data=st.data())
def test_flat_refuses_or_keeps_parameters_that_share_memory(family, data):
    """Views of one storage (tied or packed weights): flat=True refuses them with a ValueError
    or updates them exactly as the reference loop does, the shared storage included."""
    kwargs = data.draw(problems([family], odd_types=False), label="problem").kwargs
    slices = data.draw(
        st.lists(st.tuples(st.integers(0, 6), st.integers(1, 4)), min_size=2, max_size=3),
        label="slices (start, length) of one storage",
    )
    cls = FAMILIES[family].cls
    grads = [
        torch.randn(length, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
        for i, (_, length) in enumerate(slices)
    ]

    def build() -> tuple[torch.Tensor, list[torch.Tensor]]:
        storage = torch.linspace(-1, 1, 10, dtype=torch.float64)
        return storage, [storage[s : s + n].requires_grad_() for s, n in slices]

    def train(optimizer: Optimizer, params: list[torch.Tensor]) -> None:
        for _ in range(3):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()

    storage, params = build()
    try:
        flat = cls(params, **kwargs, flat=True)
    except ValueError as error:
        assert any(w in str(error).lower() for w in ("share", "memory", "overlap", "storage")), (
            f"refused without naming shared memory: {error}"
        )
        return
    train(flat, params)
    reference_storage, reference_params = build()
    train(cls(reference_params, **kwargs, foreach=False), reference_params)
    for p, q in zip(params, reference_params, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(storage, reference_storage, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------
# corrupted state dicts: a clear error, nothing changed, never a crash

CHILD_TIMEOUT_S = 60


def in_child(check: Callable[[Callable[[str], None]], None]) -> str | None:
    """Run ``check(note)`` in a forked child; None if it passed, else what went wrong.

    ``note(text)`` sends text to the parent at once, so it survives a crash that follows.
    A child killed by a signal (a segfault in a kernel) is reported, not inherited.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        os.close(read_end)
        status = 0
        try:
            check(lambda text: os.write(write_end, text.encode() + b"\n"))
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
            status = 1
        os._exit(status)
    os.close(write_end)
    chunks = []
    while True:
        ready, _, _ = select.select([read_end], [], [], CHILD_TIMEOUT_S)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            chunks.append(f"\n(child killed after {CHILD_TIMEOUT_S} s)".encode())
            break
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    output = b"".join(chunks).decode(errors="replace")
    if os.WIFSIGNALED(status):
        name = signal.Signals(os.WTERMSIG(status)).name
        return f"{output}\nthe process CRASHED with {name}"
    if os.WEXITSTATUS(status) != 0 or output:
        return output or f"child exited with status {os.WEXITSTATUS(status)}"
    return None


def _tensor_key_paths(
    state_dict: dict[str, Any], include_step: bool, min_keys: int = 1
) -> list[tuple[int, str]]:
    """(parameter index, key) of the state tensors, in states with at least ``min_keys``."""
    return sorted(
        (index, key)
        for index, state in state_dict["state"].items()
        if len(state) >= min_keys
        for key, value in state.items()
        if isinstance(value, torch.Tensor) and (include_step or key != "step")
    )


def _wrong_shapes(shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    numel = math.prod(shape)
    candidates = [(1,), (), (numel,), (1, *shape), (*shape, 2), (numel + 1,)]
    return list(dict.fromkeys(s for s in candidates if s != shape))


@st.composite
def corruptions(draw: st.DrawFn, saved: dict[str, Any]) -> tuple[dict[str, Any], str, list[str]]:
    """A corrupted copy of ``saved``, a description, and words its error message must name."""
    bad = copy.deepcopy(saved)
    kinds = ["group_count", "group_params", "missing_top_key", "group_hyper_type"]
    if _tensor_key_paths(saved, include_step=True):
        kinds += ["state_type"]
    # a state without its only key is an empty state, which is valid (no step taken yet)
    if _tensor_key_paths(saved, include_step=True, min_keys=2):
        kinds += ["state_missing_key"]
    if _tensor_key_paths(saved, include_step=False):
        kinds += ["state_shape"] * 3  # the crash-prone kind: draw it more often
    kind = draw(st.sampled_from(kinds))
    if kind == "state_shape":
        index, key = draw(st.sampled_from(_tensor_key_paths(saved, include_step=False)))
        value = bad["state"][index][key]
        shape = draw(st.sampled_from(_wrong_shapes(tuple(value.shape))))
        bad["state"][index][key] = torch.ones(shape, dtype=value.dtype)
        return bad, f"state[{index}][{key!r}] of shape {shape} for {tuple(value.shape)}", [key]
    if kind == "state_missing_key":
        index, key = draw(st.sampled_from(_tensor_key_paths(saved, True, min_keys=2)))
        del bad["state"][index][key]
        return bad, f"state[{index}] without {key!r}", [key]
    if kind == "state_type":
        index, key = draw(st.sampled_from(_tensor_key_paths(saved, include_step=True)))
        # a float "step" is torch's legacy format, and None a momentum buffer SGD starts
        # afresh: both valid; a float moment is not
        values = ["bad", [1.0]] + ([] if key == "step" else [0.5])
        value = draw(st.sampled_from(values))
        bad["state"][index][key] = value
        return bad, f"state[{index}][{key!r}] = {value!r}", [key]
    if kind == "group_count":
        if len(bad["param_groups"]) > 1 and draw(st.booleans()):
            dropped = bad["param_groups"].pop()
            for index in dropped["params"]:
                bad["state"].pop(index, None)
            return bad, "one param group fewer", ["group"]
        extra = copy.deepcopy(bad["param_groups"][-1])
        first_free = 1 + max(i for g in bad["param_groups"] for i in g["params"])
        extra["params"] = [first_free + i for i in range(len(extra["params"]))]
        bad["param_groups"].append(extra)
        return bad, "one param group more", ["group"]
    if kind == "group_params":
        group = bad["param_groups"][draw(st.integers(0, len(bad["param_groups"]) - 1))]
        if len(group["params"]) > 1 and draw(st.booleans()):
            bad["state"].pop(group["params"].pop(), None)
            return bad, "a param group with one parameter fewer", ["group", "param"]
        group["params"].append(1 + max(i for g in bad["param_groups"] for i in g["params"]))
        return bad, "a param group with one parameter more", ["group", "param"]
    if kind == "missing_top_key":
        key = draw(st.sampled_from(["state", "param_groups"]))
        del bad[key]
        return bad, f"no {key!r}", [key]
    group = bad["param_groups"][draw(st.integers(0, len(bad["param_groups"]) - 1))]
    name = draw(st.sampled_from(["lr", "weight_decay"]))
    value = draw(st.sampled_from(["0.1", None]))
    group[name] = value
    return bad, f"param group {name} = {value!r}", [name]


def _snapshot(optimizer: Optimizer, params: list[torch.Tensor]) -> Any:
    """Deep copies of everything a load may change: the state dict and parameter values."""
    return copy.deepcopy(optimizer.state_dict()), [p.detach().clone() for p in params]


def _differences(before: Any, after: Any, where: str = "") -> list[str]:
    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
        same = (
            isinstance(before, torch.Tensor)
            and isinstance(after, torch.Tensor)
            and before.shape == after.shape
            and before.dtype == after.dtype
            and torch.equal(before, after)
        )
        return [] if same else [f"{where}: {before!r} -> {after!r}"]
    if isinstance(before, dict) and isinstance(after, dict):
        if set(before) != set(after):
            return [f"{where}: keys {sorted(map(str, before))} -> {sorted(map(str, after))}"]
        return [d for k in before for d in _differences(before[k], after[k], f"{where}[{k!r}]")]
    if isinstance(before, list | tuple) and isinstance(after, list | tuple):
        if len(before) != len(after):
            return [f"{where}: length {len(before)} -> {len(after)}"]
        pairs = enumerate(zip(before, after, strict=True))
        return [d for i, (b, a) in pairs for d in _differences(b, a, f"{where}[{i}]")]
    return [] if before == after else [f"{where}: {before!r} -> {after!r}"]


@pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "darwin",
    reason="each corrupted load runs in a forked process (POSIX fork, not macOS)",
)
@pytest.mark.parametrize("family", list(FAMILIES))
@given(data=st.data())
def test_corrupted_state_dict_is_refused_and_changes_nothing(family, data):
    problem = data.draw(
        problems(
            [family], max_params=3, max_steps=2, simple_layouts=True, odd_types=False, large=True
        ),
        label="problem",
    )
    saver_params = make_params(problem)
    saver = our_optimizer(saver_params, problem)
    run(problem, [saver], [saver_params], range(problem.steps))
    bad, description, names = data.draw(corruptions(saver.state_dict()), label="corruption")

    target_steps = data.draw(st.integers(0, 1), label="target_steps")
    target_params, reference_params = make_params(problem), make_params(problem)
    target = our_optimizer(target_params, problem)
    reference = our_optimizer(reference_params, problem)
    run(problem, [target, reference], [target_params, reference_params], range(target_steps))

    def check(note: Callable[[str], None]) -> None:
        before = _snapshot(target, target_params)
        try:
            target.load_state_dict(bad)
        except (ValueError, TypeError, KeyError) as error:
            message = str(error)
            if not any(name.lower() in message.lower() for name in names):
                note(
                    f"{description}: error does not name {names}: {type(error).__name__}: {message}"
                )
        except Exception as error:
            note(
                f"{description}: load raised {type(error).__name__} (want ValueError, "
                f"TypeError or KeyError): {error}"
            )
        else:
            note(f"{description}: load_state_dict ACCEPTED the corrupted state dict")
        changes = _differences(before, _snapshot(target, target_params))
        if changes:
            note(f"{description}: the failed load changed the optimizer: {changes[:3]}")
        try:
            run(
                problem,
                [target, reference],
                [target_params, reference_params],
                range(target_steps, target_steps + 1),
            )
            assert_same_run(
                target_params,
                target,
                reference_params,
                reference,
                problem,
                "step after the refused load vs an optimizer that never saw it",
            )
        except Exception as error:
            note(f"{description}: the next step: {type(error).__name__}: {error}")

    failure = in_child(check)
    assert failure is None, f"{failure}\n{problem.describe()}"
