r"""Learning-rate schedules, each a ``torch.optim.lr_scheduler.LRScheduler`` subclass.

Every schedule the source document names, written from its formula:

=====================  ==========================================================  =========
schedule               learning rate at step ``t``                                 steps per
=====================  ==========================================================  =========
``StepDecay``          ``base * gamma ** (t // step_size)``                        epoch
``ExponentialDecay``   ``base * gamma ** t = base * exp(-k t)``                    epoch
``ReduceLROnPlateau``  ``lr * factor`` after ``patience`` epochs without progress  epoch
``CyclicLR``           triangle between ``base_lr`` and ``max_lr``                 batch
``WarmupCosine``       linear warm-up, then cosine down to ``min_lr``              batch
``OneCycleLR``         up to ``max_lr`` and down far below the start               batch
=====================  ==========================================================  =========

Conventions, the same as ``torch.optim.lr_scheduler``:

* ``t`` is ``scheduler.last_epoch``: 0 once the scheduler is built, +1 per ``scheduler.step()``.
  Call ``scheduler.step()`` after ``optimizer.step()``: once per epoch for the epoch schedules,
  once per batch for the per-step ones.
* ``base`` is each param group's ``initial_lr``: its ``lr`` when the first scheduler was built.
* Learning rates, floors and momentums may be one value or a list with one per param group.
* ``StepDecay`` and ``ExponentialDecay`` are *chainable*: a step multiplies the group's current
  learning rate, so ``torch.optim.lr_scheduler.ChainedScheduler`` composes them with each other
  and with torch's chainable schedules. ``ReduceLROnPlateau`` also multiplies the current rate,
  but its ``step(metric)`` needs a metric that ``ChainedScheduler.step()`` does not pass: step it
  yourself beside the others. ``CyclicLR``, ``WarmupCosine`` and ``OneCycleLR`` set the learning
  rate to their formula (as torch's ``CyclicLR`` and ``OneCycleLR`` do); compose them in time with
  ``SequentialLR``.
* ``state_dict()`` / ``load_state_dict()`` hold plain numbers and strings, so a checkpoint loads
  with ``torch.load(..., weights_only=True)`` and the resumed run continues identically. Build the
  scheduler first, then load the optimizer's and the scheduler's state.

The schedulers use an optimizer only through ``torch.optim.Optimizer``'s interface (its
``param_groups``), so they drive ``torchopt_edu.optim`` and ``torch.optim`` optimizers alike.

One module per family: :mod:`~torchopt_edu.lr_scheduler.decay` (the chainable decays),
:mod:`~torchopt_edu.lr_scheduler.plateau`, :mod:`~torchopt_edu.lr_scheduler.cyclic` (the formula
schedules) and :mod:`~torchopt_edu.lr_scheduler.plot` (:func:`simulate_schedule` and
:func:`plot_schedule`: a schedule as a curve, drawn with matplotlib from the ``viz`` extra).
"""

from torchopt_edu.lr_scheduler.cyclic import CyclicLR, OneCycleLR, WarmupCosine
from torchopt_edu.lr_scheduler.decay import ExponentialDecay, StepDecay
from torchopt_edu.lr_scheduler.plateau import ReduceLROnPlateau
from torchopt_edu.lr_scheduler.plot import Schedule, plot_schedule, simulate_schedule

__all__ = [
    "CyclicLR",
    "ExponentialDecay",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "Schedule",
    "StepDecay",
    "WarmupCosine",
    "plot_schedule",
    "simulate_schedule",
]
