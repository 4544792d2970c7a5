"""Test-session settings shared by tests/ and the notebooks run through nbmake.

One intra-op thread per process: CI runs two pytest workers on two cores, and torch's
default of one thread per core would make the workers' thread pools fight (a fused optimizer
kernel waiting on a busy core can take 100x longer). Notebook kernels inherit the variable.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)

# Property tests (tests/optim/test_properties.py): "ci" is small and reproducible;
# HYPOTHESIS_PROFILE=long searches much further (see README, Development).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
