"""Kept so that ``from torchopt_edu.viz import plot_schedule`` goes on working.

The schedule plots live in :mod:`torchopt_edu.lr_scheduler.plot`; import them from
:mod:`torchopt_edu.lr_scheduler`.
"""

from torchopt_edu.lr_scheduler.plot import Schedule, plot_schedule, simulate_schedule

__all__ = ["Schedule", "plot_schedule", "simulate_schedule"]
