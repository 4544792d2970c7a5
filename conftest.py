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
