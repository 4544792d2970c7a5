"""torchopt-edu: deep-learning optimizers that read like the math and run as fast as torch.optim."""

__version__ = "0.1.0"
