"""Which optimizer should I use? Time to a validation target, AlgoPerf style, on a CPU.

AlgoPerf (MLCommons; Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms") scores
a training algorithm by the time it takes to reach a fixed validation target on several
workloads, under a fixed tuning budget, and summarises the times by performance profiles. This
package does the same with six workloads small enough for a laptop's CPU (data that ships with a
package, no download), for any optimizer of ``torchopt_edu.optim`` or ``torch.optim``::

    from torchopt_edu.benchmark import (
        benchmark_score, format_table, performance_ratios, run_benchmark, time_to_target,
    )

    results = run_benchmark(["digits_mlp", "sbm_gcn"], ["adam", "sgd"], trials=5, studies=3)
    print(format_table(results))                               # seconds to target, score
    print(benchmark_score(performance_ratios(time_to_target(results, by="steps"))))

A new workload is one small class (:class:`Workload`). :func:`run_shared` runs the same plan with
any number of worker processes sharing the records in a database (SQLite or PostgreSQL). Needs
Optuna (``[tune]``: the search spaces), scikit-learn (``[data]``) and PyTorch Geometric (the GCN
workload); plots need matplotlib (``[viz]``).
"""

from torchopt_edu.benchmark.profiles import (
    MAX_RATIO,
    MEASURES,
    benchmark_score,
    format_table,
    performance_profile,
    performance_ratios,
    time_to_target,
)
from torchopt_edu.benchmark.protocol import (
    EXTERNAL_OPTIMIZERS,
    SELF_TUNING_OPTIMIZERS,
    TRACKS,
    PlannedTrial,
    TrialKey,
    TrialResult,
    draw_configs,
    plan_trials,
    run_benchmark,
    run_trial,
)
from torchopt_edu.benchmark.shared import run_shared
from torchopt_edu.benchmark.workload import Workload
from torchopt_edu.benchmark.workloads import (
    SBMGCN,
    WORKLOADS,
    CharLM,
    Diabetes,
    DigitsCNN,
    DigitsMLP,
    DigitsMultiTask,
    get_workload,
)

__all__ = [
    "EXTERNAL_OPTIMIZERS",
    "MAX_RATIO",
    "MEASURES",
    "SBMGCN",
    "SELF_TUNING_OPTIMIZERS",
    "TRACKS",
    "WORKLOADS",
    "CharLM",
    "Diabetes",
    "DigitsCNN",
    "DigitsMLP",
    "DigitsMultiTask",
    "PlannedTrial",
    "TrialKey",
    "TrialResult",
    "Workload",
    "benchmark_score",
    "draw_configs",
    "format_table",
    "get_workload",
    "performance_profile",
    "performance_ratios",
    "plan_trials",
    "run_benchmark",
    "run_shared",
    "run_trial",
    "time_to_target",
]
