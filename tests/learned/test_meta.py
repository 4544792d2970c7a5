"""Meta-training: ES lowers the meta-loss, resumes exactly; the command line and the bench."""

from __future__ import annotations

import json
import math

import pytest
import torch

from torchopt_edu.cli import main as cli_main
from torchopt_edu.learned import LearnedNet, load_net
from torchopt_edu.learned.meta import MAX_LOG_RATIO, MetaTrainer, meta_loss, unroll
from torchopt_edu.learned.tasks import FAMILIES


def _net(seed: int = 0) -> LearnedNet:
    torch.manual_seed(seed)
    return LearnedNet()


TINY = dict(families=["quadratic", "mlp"], pairs=2, unroll=10, sigma=0.05, meta_lr=0.05)


def test_meta_loss_is_the_mean_clipped_log_ratio():
    assert meta_loss([4.0, 2.0, 1.0]) == pytest.approx((math.log(0.5) + math.log(0.25)) / 2)
    assert meta_loss([1.0, math.inf, math.nan]) == MAX_LOG_RATIO
    assert meta_loss([1.0, 1e9]) == MAX_LOG_RATIO


def test_every_family_trains_and_an_untrained_net_descends():
    for family in FAMILIES:
        losses = unroll(LearnedNet(), family, seed=1, steps=20, lr=0.01)
        assert len(losses) == 21
        assert losses[-1] < losses[0], family


def test_meta_training_lowers_the_meta_loss_on_fixed_tasks():
    trainer = MetaTrainer(_net(0), seed=0, **{**TINY, "meta_lr": 0.1})
    validation = [(family, 500 + i) for i in range(3) for family in TINY["families"]]
    before = trainer.evaluate(validation)  # about -0.08: Adam at lr 1e-3 for 10 steps
    for _ in range(6):
        trainer.step()
    after = trainer.evaluate(validation)  # measured -0.36: it learned to take larger steps
    assert after < before - 0.1, (before, after)


def test_resume_continues_exactly(tmp_path):
    straight = MetaTrainer(_net(), seed=1, **TINY)
    for _ in range(3):
        straight.step()
    first = MetaTrainer(_net(), seed=1, **TINY)
    for _ in range(2):
        first.step()
    torch.save(first.state_dict(), tmp_path / "meta.pt")
    second = MetaTrainer(_net(), seed=1, **TINY)
    second.load_state_dict(torch.load(tmp_path / "meta.pt", weights_only=True))
    second.step()
    assert torch.equal(second.phi, straight.phi)
    assert second.history == straight.history
    with pytest.raises(ValueError, match="meta-trained with"):
        MetaTrainer(LearnedNet(), seed=2, **TINY).load_state_dict(first.state_dict())


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="families must be a non-empty list"):
        MetaTrainer(LearnedNet(), families=["cifar"])
    with pytest.raises(ValueError, match="sigma must lie in"):
        MetaTrainer(LearnedNet(), sigma=0.0)
    with pytest.raises(TypeError, match="net must be a LearnedNet"):
        MetaTrainer(torch.nn.Linear(2, 2))


def test_command_trains_checkpoints_and_resumes(tmp_path, capsys):
    args = [
        "learn-optimizer",
        "--steps",
        "2",
        "--pairs",
        "1",
        "--unroll",
        "5",
        "--families",
        "quadratic",
        "--validation-tasks",
        "1",
        "--out",
        str(tmp_path),
        "--no-progress",
        "--no-plot",
        "--checkpoint-every",
        "1",
    ]
    assert cli_main(args) == 0
    assert cli_main([*args[:2], "3", *args[3:], "--resume"]) == 0
    record = json.loads((tmp_path / "history.json").read_text())
    assert len(record["history"]) == 3
    net = load_net(tmp_path / "weights.pt")
    assert net.use_graph
    out = capsys.readouterr().out
    assert "3 meta-steps" in out
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["learn-optimizer", "--out", str(tmp_path / "empty"), "--resume"])
    assert exit_info.value.code == 2
    assert "there is no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["learn-optimizer", "--families", "cifar"])
    assert "unknown task family 'cifar'" in capsys.readouterr().err


def test_bench_table_compares_with_fused_adam(capsys):
    from torchopt_edu.learned.bench import YARDSTICK, step_time_table

    rows = step_time_table([("tiny", 3, 100)], steps=1, warmup=0)
    assert [r["optimizer"] for r in rows] == [
        YARDSTICK,
        "learned (graph)",
        "learned (no graph)",
        "learned (graph, compiled)",
    ]
    assert rows[0]["ratio_to_fused_adam"] == 1.0
    assert all(r["ms_per_step"] > 0 for r in rows)


def test_a_checkpoint_that_does_not_fit_leaves_the_trainer_as_it_was():
    """phi was copied before the meta-optimizer's state failed to load."""
    import copy

    from torchopt_edu.learned.meta import MetaTrainer
    from torchopt_edu.learned.nets import LearnedNet

    def trainer():
        return MetaTrainer(LearnedNet(), families=["quadratic"], pairs=1, unroll=3)

    source = trainer()
    source.step()
    saved = copy.deepcopy(source.state_dict())
    saved["meta_optimizer"] = {"state": {}, "param_groups": []}
    target = trainer()
    target.step()
    phi, history = target.phi.detach().clone(), list(target.history)
    with pytest.raises(ValueError, match="does not fit this trainer"):
        target.load_state_dict(saved)
    assert torch.equal(target.phi, phi) and target.history == history
    with pytest.raises(ValueError, match="expects what state_dict"):
        target.load_state_dict(None)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_resume_from_a_damaged_checkpoint_is_a_usage_error(content, tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    argv = ["learn-optimizer", "--steps", "2", "--pairs", "1", "--unroll", "2"]
    argv += ["--families", "quadratic", "--validation-tasks", "0", "--no-plot", "--no-progress"]
    with pytest.raises(SystemExit) as exit_:
        cli_main([*argv, "--out", str(tmp_path), "--resume"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --resume: cannot resume from" in err
    assert err.count("\n") == 1 and (tmp_path / "checkpoint.pt").read_bytes() == content
