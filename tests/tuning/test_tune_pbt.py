"""Population-based training: exploit copies weights and exact optimizer state, explore perturbs
within the space, parallel processes give the in-process numbers, a checkpoint resumes exactly."""

import math

import numpy as np
import pytest
import torch

from torchopt_edu.tuning import LogUniform, Uniform
from torchopt_edu.tuning.pbt import (
    Member,
    exploit_and_explore,
    population_based_training,
    train_member,
)

SPACE = {"lr": LogUniform(1e-3, 1e-1), "momentum": Uniform(0.0, 0.9)}
SMALL = {"population": 4, "interval": 10, "rounds": 3}


def _same(a, b):
    assert [m.schedule for m in a.members] == [m.schedule for m in b.members]
    for x, y in zip(a.members, b.members, strict=True):
        assert all(torch.equal(x.model_state[k], y.model_state[k]) for k in x.model_state)
        assert x.optimizer_state["param_groups"] == y.optimizer_state["param_groups"]
        for i, state in x.optimizer_state["state"].items():
            for key, value in state.items():
                assert torch.equal(
                    torch.as_tensor(value), torch.as_tensor(y.optimizer_state["state"][i][key])
                )


def test_exploit_copies_the_top_and_explore_moves_by_0_8_or_1_2_within_the_space():
    weights = {"w": torch.arange(3.0)}
    members = [
        Member(i, {"lr": 0.01 * (i + 1), "momentum": 0.5}, {"w": weights["w"] * i}, {"m": i}, s)
        for i, s in enumerate([0.1, 0.9, math.nan, 0.5, math.nan])
    ]
    members[1].hyperparameters = {"lr": 0.1, "momentum": 0.85}  # at / near the top of the space
    copies = exploit_and_explore(
        members,
        SPACE,
        np.random.default_rng(0),
        quantile=0.2,
        resample_probability=0.0,
        higher_is_better=True,
    )
    # The bottom 20 % (one member: a diverged one) and every diverged member copy the top 20 %.
    assert copies == {2: 1, 4: 1}
    for loser in (2, 4):
        member = members[loser]
        assert torch.equal(member.model_state["w"], weights["w"] * 1)
        assert member.optimizer_state == {"m": 1} and member.copied_from == 1
        assert member.model_state["w"] is not members[1].model_state["w"]  # a copy
        assert member.hyperparameters["lr"] in (pytest.approx(0.08), 0.1)  # x1.2 clipped at 0.1
        assert member.hyperparameters["momentum"] in (pytest.approx(0.68), 0.9)
    assert members[0].copied_from is None and members[0].hyperparameters["lr"] == 0.01


def test_train_member_continues_the_copied_state_with_the_new_hyperparameters():
    model, state, _ = train_member(
        "diabetes", "adam", {"lr": 0.01}, None, None, 5, init_seed=0, batch_seed=1
    )
    _, state2, score = train_member(
        "diabetes", "adam", {"lr": 0.002}, model, state, 5, init_seed=0, batch_seed=2
    )
    assert [g["lr"] for g in state2["param_groups"]] == [0.002]
    assert all(float(s["step"]) == 10 for s in state2["state"].values())  # moments carried on
    assert math.isfinite(score)


def test_two_processes_give_the_in_process_numbers_and_a_checkpoint_resumes_exactly(tmp_path):
    alone = population_based_training("diabetes", "sgd", SPACE, workers=0, **SMALL)
    parallel = population_based_training("diabetes", "sgd", SPACE, workers=2, **SMALL)
    _same(alone, parallel)
    schedule = alone.members[0].schedule
    assert [entry["steps"] for entry in schedule] == [10, 20, 30]
    assert any(entry["copied_from"] is not None for m in alone.members for entry in m.schedule)

    checkpoint = tmp_path / "population.pt"

    def stop_after_round_1(round_, members):
        if round_ == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        population_based_training(
            "diabetes",
            "sgd",
            SPACE,
            workers=0,
            checkpoint=checkpoint,
            on_round=stop_after_round_1,
            **SMALL,
        )
    resumed = population_based_training(
        "diabetes", "sgd", SPACE, workers=0, checkpoint=checkpoint, **SMALL
    )
    _same(alone, resumed)
    assert resumed.total_steps == 4 * 30
    assert resumed.best_score == max(m.score for m in resumed.members)


def test_a_checkpoint_of_another_run_or_a_damaged_one_is_refused_and_kept(tmp_path):
    checkpoint = tmp_path / "population.pt"
    population_based_training(
        "diabetes",
        "sgd",
        SPACE,
        workers=0,
        checkpoint=checkpoint,
        population=2,
        interval=2,
        rounds=1,
    )
    saved = checkpoint.read_bytes()
    with pytest.raises(ValueError, match=r"belongs to another run \(population: 2 -> 3\)"):
        population_based_training(
            "diabetes",
            "sgd",
            SPACE,
            workers=0,
            checkpoint=checkpoint,
            population=3,
            interval=2,
            rounds=1,
        )
    checkpoint.write_bytes(saved[:100])
    with pytest.raises(ValueError, match=rf"cannot read the PBT checkpoint {checkpoint}"):
        population_based_training(
            "diabetes",
            "sgd",
            SPACE,
            workers=0,
            checkpoint=checkpoint,
            population=2,
            interval=2,
            rounds=1,
        )
    assert checkpoint.read_bytes() == saved[:100]


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match=r"population must be >= 2, got 1"):
        population_based_training("diabetes", population=1)
    with pytest.raises(ValueError, match=r"quantile"):
        population_based_training("diabetes", quantile=0.7)
    with pytest.raises(ValueError, match=r"unknown workload 'mnist'"):
        population_based_training("mnist")
    with pytest.raises(ValueError, match=r"searches no hyper-parameter"):
        population_based_training("diabetes", "sgd", {"lr": 0.1})


def test_command_line_saves_schedules_and_resumes(tmp_path, capsys):
    import json

    from torchopt_edu.cli.pbt import main

    args = ["--workload", "diabetes", "--optimizer", "sgd", "--population", "3"]
    args += ["--interval", "5", "--workers", "0", "--out", str(tmp_path)]
    assert main([*args, "--rounds", "2", "--no-plot"]) == 0
    assert main([*args, "--rounds", "3", "--json", str(tmp_path / "best.json")]) == 0
    printed = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'population.pt'}" in printed
    assert "round 3: best" in printed and "round 1:" not in printed.split("resuming")[1]
    schedules = json.loads((tmp_path / "schedules.json").read_text())
    assert sorted(schedules) == ["0", "1", "2"]
    assert [entry["steps"] for entry in schedules["0"]] == [5, 10, 15]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["total_steps"] == 3 * 3 * 5
    assert best["best_score"] == max(entry[-1]["score"] for entry in schedules.values())
    assert (tmp_path / "schedules.png").read_bytes()[:4] == b"\x89PNG"


def test_schedule_plot_has_a_panel_per_hyperparameter_and_follows_each_member():
    pytest.importorskip("matplotlib")
    from torchopt_edu.tuning import plot_pbt_schedules

    result = population_based_training(
        "diabetes", "adam", population=2, interval=5, rounds=3, workers=0
    )
    figure = plot_pbt_schedules(result)
    axes = figure.axes
    titles = [axis.get_title() for axis in axes]
    assert titles == ["lr", "betas[0]", "betas[1]", "weight_decay", result.metric]
    assert axes[0].get_yscale() == "log" and axes[1].get_yscale() == "linear"
    for member, line in zip(result.members, axes[2].get_lines(), strict=True):
        drawn = list(line.get_ydata())
        assert drawn == [e["hyperparameters"]["betas"][1] for e in member.schedule] + drawn[-1:]
        assert list(line.get_xdata()) == [0, 5, 10, 15]
    best = axes[-1].get_lines()[result.best.index]
    assert list(best.get_ydata()) == [e["score"] for e in result.best.schedule]
    assert best.get_color() == "black"


def test_command_line_round_line_shows_the_lowest_score_where_lower_is_better(tmp_path, capsys):
    import json
    import re

    from torchopt_edu.cli.pbt import main

    args = ["--workload", "digits_multitask", "--population", "3", "--interval", "2"]
    assert (
        main([*args, "--rounds", "1", "--workers", "0", "--no-plot", "--out", str(tmp_path)]) == 0
    )
    best = float(re.search(r"round 1: best (\S+),", capsys.readouterr().out)[1])
    scores = [
        entry[0]["score"]
        for entry in json.loads((tmp_path / "schedules.json").read_text()).values()
    ]
    assert len(set(scores)) == 3  # the lowest differs from the highest
    assert best == pytest.approx(min(scores), abs=5e-5)


def test_command_line_names_a_damaged_checkpoint_in_one_line_and_keeps_it(tmp_path, capsys):
    from torchopt_edu.cli.pbt import main

    checkpoint = tmp_path / "population.pt"
    checkpoint.write_bytes(b"garbage\n")
    args = ["--workload", "diabetes", "--population", "2", "--interval", "2", "--rounds", "1"]
    assert main([*args, "--workers", "0", "--no-plot", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read the PBT checkpoint {checkpoint} (UnpicklingError)")
    assert err.count("\n") == 1 and "weights_only" not in err
    assert checkpoint.read_bytes() == b"garbage\n"


def test_resuming_with_fewer_rounds_than_the_checkpoint_holds_reports_the_rounds_done(
    tmp_path, capsys
):
    import json

    from torchopt_edu.cli.pbt import main

    args = ["--workload", "diabetes", "--optimizer", "sgd", "--population", "2"]
    args += ["--interval", "2", "--workers", "0", "--no-plot", "--out", str(tmp_path)]
    assert main([*args, "--rounds", "3"]) == 0
    saved = (tmp_path / "population.pt").read_bytes()
    capsys.readouterr()
    assert main([*args, "--rounds", "1", "--json", str(tmp_path / "best.json")]) == 0
    printed = capsys.readouterr().out
    assert "already holds 3 rounds, more than --rounds 1: nothing was trained" in printed
    assert "round " not in printed
    assert json.loads((tmp_path / "best.json").read_text())["total_steps"] == 2 * 3 * 2
    assert (tmp_path / "population.pt").read_bytes() == saved

    result = population_based_training(
        "diabetes",
        "sgd",
        population=2,
        interval=2,
        rounds=1,
        workers=0,
        checkpoint=tmp_path / "population.pt",
    )
    assert result.rounds == 3 and result.total_steps == 2 * 3 * 2
    assert all(len(schedule) == 3 for schedule in result.schedules.values())


def test_hypergradient_members_carry_on_from_the_learned_rate_and_copiers_perturb_it():
    space = {"lr": LogUniform(0.01, 0.2), "hypergrad_lr": LogUniform(1e-4, 1e-3)}
    learned = []  # after each round: every member's lr in its optimizer state

    def record(round_, members):
        learned.append([m.optimizer_state["param_groups"][0]["lr"] for m in members])

    result = population_based_training(
        "diabetes",
        "sgdhd",
        space,
        population=4,
        interval=10,
        rounds=2,
        workers=0,
        resample_probability=0.0,
        on_round=record,
    )
    started = [[entry["hyperparameters"]["lr"] for entry in m.schedule] for m in result.members]
    assert all(learned[0][i] != started[i][0] for i in range(4))  # the rate moved in round 1
    copied = {m.index: m.schedule[1]["copied_from"] for m in result.members}
    assert any(winner is not None for winner in copied.values())
    for i, winner in copied.items():
        if winner is None:  # round 2 starts where round 1's learning left the rate
            assert started[i][1] == learned[0][i]
        else:  # the winner's learned rate, times 0.8 or 1.2, inside the space
            moved = [min(max(learned[0][winner] * f, 0.01), 0.2) for f in (0.8, 1.2)]
            assert started[i][1] in [pytest.approx(rate, rel=1e-12) for rate in moved]
    best = result.best
    assert result.best_config().hyperparameters["lr"] == learned[1][best.index]
