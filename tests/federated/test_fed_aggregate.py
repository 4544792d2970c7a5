"""fed_avg, weighted_sum/average and check_update: hand-computed means and named errors."""

import warnings

import numpy as np
import pytest
import torch

from torchopt_edu.federated import InvalidUpdateError, average, check_update, fed_avg, weighted_sum
from torchopt_edu.federated.aggregate import all_finite, scale_weights


def test_fed_avg_equals_hand_computed_weighted_mean():
    states = [
        {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(0.0)},
        {"w": torch.tensor([3.0, 6.0]), "b": torch.tensor(1.0)},
        {"w": torch.tensor([5.0, -2.0]), "b": torch.tensor(4.0)},
    ]
    weights = [10, 30, 60]
    result = fed_avg(states, weights)
    # (10*1 + 30*3 + 60*5)/100 = 4.0, (10*2 + 30*6 + 60*-2)/100 = 0.8, (0 + 30 + 240)/100 = 2.7
    torch.testing.assert_close(result["w"], torch.tensor([4.0, 0.8]), rtol=0, atol=1e-7)
    torch.testing.assert_close(result["b"], torch.tensor(2.7), rtol=0, atol=1e-7)
    assert result["w"].dtype == torch.float32
    assert states[0]["w"].tolist() == [1.0, 2.0]  # inputs untouched


def test_fed_avg_of_identical_states_is_exact_and_a_new_tensor():
    state = {"w": torch.randn(5, 3, generator=torch.Generator().manual_seed(0))}
    result = fed_avg([state, state, state], [7, 1, 13])
    assert torch.equal(result["w"], state["w"])
    assert result["w"].data_ptr() != state["w"].data_ptr()


@pytest.mark.parametrize("weight", [1, 7, 1e-300, 1e300, 0.3])
def test_fed_avg_of_one_client_is_that_client_exactly(weight):
    generator = torch.Generator().manual_seed(2)
    state = {
        "w": torch.randn(4, 3, generator=generator, dtype=torch.float64),
        "half": torch.randn(5, generator=generator).to(torch.bfloat16),
        "z": torch.randn(2, generator=generator, dtype=torch.complex64),
        "count": torch.tensor(11),
        "mask": torch.tensor([True, False]),
    }
    result = fed_avg([state], [weight], clients=["only"])
    assert set(result) == set(state)
    for name, tensor in state.items():
        assert result[name].dtype == tensor.dtype, name
        assert torch.equal(result[name], tensor), name
        assert result[name].data_ptr() != tensor.data_ptr(), name
    with pytest.raises(ValueError, match="at least one client needs weight > 0"):
        fed_avg([state], [0])


def test_fed_avg_accumulates_in_float64():
    # bfloat16 has 8 significant bits: 256 + 1 rounds back to 256, so a bfloat16 running sum
    # of one 256 and 255 ones stays at 256 (mean 1.0); the float64 mean 511/256 rounds to 2.0
    states = [{"x": torch.tensor([256.0], dtype=torch.bfloat16)}]
    states += [{"x": torch.tensor([1.0], dtype=torch.bfloat16)} for _ in range(255)]
    result = fed_avg(states, [1] * 256)
    expected = torch.tensor([(256.0 + 255.0) / 256.0]).to(torch.bfloat16)
    assert result["x"].dtype == torch.bfloat16
    assert torch.equal(result["x"], expected)


def test_integer_buffers_get_the_rounded_weighted_mean_and_bools_a_weighted_vote():
    states = [
        {"num_batches_tracked": torch.tensor(10), "mask": torch.tensor([True, False])},
        {"num_batches_tracked": torch.tensor(13), "mask": torch.tensor([False, False])},
        {"num_batches_tracked": torch.tensor(20), "mask": torch.tensor([True, True])},
    ]
    result = fed_avg(states, [1, 1, 2])
    # (10 + 13 + 40) / 4 = 15.75 -> 16; masks: (1+0+2)/4 = 0.75 -> True, (0+0+2)/4 = 0.5 -> False
    assert result["num_batches_tracked"].dtype == torch.int64
    assert result["num_batches_tracked"].item() == 16
    assert result["mask"].tolist() == [True, False]


def test_complex_tensors_are_averaged_in_complex128():
    states = [
        {"z": torch.tensor([1 + 1j], dtype=torch.complex64)},
        {"z": torch.tensor([3 - 1j], dtype=torch.complex64)},
    ]
    result = fed_avg(states, [1, 3])
    assert result["z"].dtype == torch.complex64
    torch.testing.assert_close(result["z"], torch.tensor([2.5 - 0.5j], dtype=torch.complex64))


def test_partial_sums_added_give_the_same_average():
    generator = torch.Generator().manual_seed(1)
    states = [{"w": torch.randn(4, generator=generator)} for _ in range(5)]
    weights = [3, 1, 4, 1, 5]
    first, total_first = weighted_sum(states[:2], weights[:2], states[0])
    second, total_second = weighted_sum(states[2:], weights[2:], states[0])
    combined = {"w": first["w"] + second["w"]}
    split = average(combined, total_first + total_second, states[0])
    torch.testing.assert_close(split["w"], fed_avg(states, weights)["w"], rtol=0, atol=1e-7)
    empty, zero = weighted_sum([], [], states[0])
    assert zero == 0 and torch.equal(empty["w"], torch.zeros(4, dtype=torch.float64))


GOOD = {"layer.weight": torch.ones(2, 3), "layer.bias": torch.zeros(2)}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"layer.weight": torch.ones(2, 3)},
            r"client 1: keys do not match.*missing \['layer.bias'\]",
        ),
        ({**GOOD, "extra": torch.ones(1)}, r"client 1: keys do not match.*unexpected \['extra'\]"),
        ({**GOOD, "layer.bias": torch.zeros(3)}, r"client 1: tensor 'layer.bias': shape \(3,\)"),
        (
            {**GOOD, "layer.bias": torch.zeros(2, dtype=torch.float64)},
            r"client 1: tensor 'layer.bias': dtype torch.float64 != expected torch.float32",
        ),
        (
            {**GOOD, "layer.weight": torch.tensor([[1.0, float("nan"), 1.0], [1.0, 1.0, 1.0]])},
            r"client 1: tensor 'layer.weight': 1 of 6 values are NaN or infinite",
        ),
        (
            {**GOOD, "layer.bias": torch.tensor([float("inf"), -float("inf")])},
            r"client 1: tensor 'layer.bias': 2 of 2 values are NaN or infinite",
        ),
        ({**GOOD, "layer.bias": [0.0, 0.0]}, r"client 1: tensor 'layer.bias': expected a Tensor"),
    ],
)
def test_malformed_states_raise_naming_client_and_tensor(bad, message):
    with pytest.raises(InvalidUpdateError, match=message) as error:
        fed_avg([GOOD, bad], [1, 1])
    assert error.value.client == 1
    assert isinstance(error.value, ValueError)


def test_client_names_appear_in_errors():
    bad = {**GOOD, "layer.bias": torch.tensor([0.0, float("nan")])}
    with pytest.raises(InvalidUpdateError, match="client phone-7: tensor 'layer.bias'"):
        fed_avg([GOOD, bad], [1, 1], clients=["phone-3", "phone-7"])
    with pytest.raises(InvalidUpdateError, match="client 9: tensor 'layer.bias'"):
        check_update(bad, GOOD, 9)


@pytest.mark.parametrize(
    ("weights", "error", "message"),
    [
        ([1, -2], ValueError, r"client 1: weight must be finite and >= 0, got -2"),
        ([1, float("nan")], ValueError, r"client 1: weight must be finite and >= 0, got nan"),
        ([0, 0], ValueError, r"the weights sum to 0.0"),
        ([1], ValueError, r"got 2 states but 1 weights"),
        ([1, "3"], TypeError, r"client 1: weight must be a number, got '3'"),
    ],
)
def test_bad_weights_raise(weights, error, message):
    with pytest.raises(error, match=message):
        fed_avg([GOOD, GOOD], weights)


def test_fed_avg_needs_a_state():
    with pytest.raises(ValueError, match="at least one state dict"):
        fed_avg([], [])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fed_avg_on_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(2)
    states = [{"w": torch.randn(8, generator=generator), "n": torch.tensor(k)} for k in range(3)]
    on_cuda = [{name: t.cuda() for name, t in state.items()} for state in states]
    result = fed_avg(on_cuda, [1, 2, 3])
    assert result["w"].is_cuda
    expected = fed_avg(states, [1, 2, 3])
    torch.testing.assert_close(result["w"].cpu(), expected["w"], rtol=0, atol=0)
    assert result["n"].item() == expected["n"].item()
    bad = {"w": on_cuda[0]["w"].clone(), "n": on_cuda[0]["n"]}
    bad["w"][3] = float("nan")
    with pytest.raises(InvalidUpdateError, match="client 1: tensor 'w'"):
        fed_avg([on_cuda[0], bad], [1, 1])


def test_a_sum_that_overflows_float64_is_reported_by_tensor():
    huge = {"w": torch.tensor([1e308], dtype=torch.float64)}
    with pytest.raises(ValueError, match="the weighted sum of tensor 'w' overflowed float64"):
        weighted_sum([huge, huge], [1, 1], huge)
    # fed_avg scales the weights to [0.5, 0.5] first, so this mean does not overflow
    assert fed_avg([huge, huge], [1, 1])["w"].item() == 1e308


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.complex64])
def test_all_finite_finds_any_nan_or_inf_and_is_not_fooled_by_a_sum_that_overflows(dtype):
    big = torch.finfo(torch.float16 if dtype == torch.float16 else torch.float32).max
    state = {"w": torch.full((4, 3), big / 2).to(dtype), "n": torch.tensor([2**62, 2**62])}
    assert all_finite(state)  # the sum of w overflows, every value is finite; ints are skipped
    for bad in (float("nan"), float("inf"), -float("inf")):
        for other in (1.0, -float("inf")):  # inf + -inf = NaN: still not finite
            poisoned = {**state, "b": torch.tensor([other, 0.0, bad]).to(dtype)}
            assert not all_finite(poisoned)
    if dtype.is_complex:
        assert not all_finite({"z": torch.tensor([complex(1.0, float("nan"))]).conj()})
    assert all_finite({}) and all_finite({"n": torch.tensor([7])})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # parameters that require grad are read without a warning
        assert all_finite(dict(torch.nn.Linear(2, 2).named_parameters()))


def test_a_non_finite_update_with_weight_zero_is_still_rejected():
    bad = {**GOOD, "layer.bias": torch.tensor([float("inf"), 0.0])}
    with pytest.raises(InvalidUpdateError, match="client 2: tensor 'layer.bias': 1 of 2"):
        fed_avg([GOOD, GOOD, bad], [1, 1, 0])


def test_numpy_and_tensor_weights_are_numbers_and_bools_are_not():
    states = [{"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([4.0, 0.0])}]
    expected = torch.tensor([3.0, 1.0])
    for weights in (np.array([1, 3]), np.array([0.5, 1.5], dtype=np.float32), torch.tensor([1, 3])):
        assert torch.equal(fed_avg(states, weights)["w"], expected)
    for weights in ([True, True], [np.True_, np.True_]):
        with pytest.raises(TypeError, match="client 0: weight must be a number"):
            fed_avg(states, weights)


def test_weights_whose_sum_overflows_float64_still_average():
    # 1e308 + 1e308 is inf in float64: unscaled, the sums stayed finite and were divided by
    # inf, giving zeros; scaled by a power of two, the mean is exact
    states = [{"w": torch.tensor([0.25, 0.5])}, {"w": torch.tensor([0.75, 1.0])}]
    assert torch.equal(fed_avg(states, [1e308, 1e308])["w"], torch.tensor([0.5, 0.75]))
    assert torch.equal(fed_avg(states, [1e-320, 3e-320])["w"], torch.tensor([0.625, 0.875]))
    assert scale_weights([3, 1, 0]) == [0.75, 0.25, 0.0]
    with pytest.raises(ValueError, match="the weights sum to inf, more than float64 holds"):
        weighted_sum(states, [1e308, 1e308], states[0])


def test_scaling_the_weights_changes_no_bit_of_the_mean():
    generator = torch.Generator().manual_seed(5)
    states = [{"w": torch.randn(1000, generator=generator, dtype=torch.float64)} for _ in range(3)]
    weights = [123, 4567, 89]
    sums, total = weighted_sum(states, weights, states[0])
    assert torch.equal(fed_avg(states, weights)["w"], average(sums, total, states[0])["w"])


def test_invalid_update_error_keeps_its_fields_through_pickling():
    import pickle

    error = InvalidUpdateError("phone-7", "layer.bias", "shape (3,) != expected (2,)")
    assert (error.client, error.tensor, error.problem) == (
        "phone-7",
        "layer.bias",
        "shape (3,) != expected (2,)",
    )
    assert str(error) == "client phone-7: tensor 'layer.bias': shape (3,) != expected (2,)"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is InvalidUpdateError and str(copy) == str(error)
    assert (copy.client, copy.tensor, copy.problem) == (error.client, error.tensor, error.problem)
    assert str(InvalidUpdateError(3, None, "keys differ")) == "client 3: keys differ"


def test_edge_cases_of_the_helpers_are_named_or_empty():
    assert scale_weights([]) == []
    assert scale_weights([0, 0]) == [0.0, 0.0]
    assert scale_weights([3, 1]) == [0.75, 0.25]  # 3 = 0.75 * 2**2
    with pytest.raises(ValueError, match=r"^fed_avg needs at least one state dict, got none$"):
        fed_avg([], [])
    with pytest.raises(ValueError, match=r"^got 2 states but 1 client names$"):
        fed_avg([GOOD, GOOD], [1, 1], clients=["a"])
    with pytest.raises(InvalidUpdateError, match=r"^client tablet: keys do not match the model"):
        check_update({"layer.weight": torch.ones(2, 3)}, GOOD, "tablet")


def test_weighted_sum_names_mismatched_clients_and_non_tensors():
    with pytest.raises(ValueError, match=r"^got 2 states but 3 client names$"):
        weighted_sum([GOOD, GOOD], [1, 1], GOOD, clients=["a", "b", "c"])
    with pytest.raises(InvalidUpdateError, match=r"'layer.bias': expected a Tensor, got list"):
        fed_avg([GOOD, {**GOOD, "layer.bias": [0.0, 0.0]}], [1, 1])
