"""Packaging for torchopt-edu: readable PyTorch optimizers as fast as torch.optim."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
# The version lives in one place, torchopt_edu/__init__.py (read, not imported: that needs torch).
VERSION = re.search(
    r'^__version__ = "([^"]+)"',
    (HERE / "torchopt_edu" / "__init__.py").read_text(encoding="utf-8"),
    re.M,
)[1]
REPOSITORY = "https://github.com/torchopt-edu/torchopt-edu"

EXTRAS = {
    # cmaes and scipy: Optuna's CMA-ES and Gaussian-process samplers.
    "tune": ["optuna>=3.6", "cmaes>=0.10", "scipy>=1.10"],
    # A PostgreSQL driver for studies shared by workers on several machines.
    "postgres": ["psycopg2-binary>=2.9"],
    # Flower deployment and simulation of this package's strategies (simulation: Ray, a 74 MB
    # wheel, ~7 s to install); Opacus's privacy accountant.
    "fed": ["flwr[simulation]>=1.20", "opacus>=1.5"],
    "viz": ["matplotlib>=3.6"],
    "data": ["scikit-learn>=1.2"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# Not in "all": a Jupyter front end to open the notebooks (`jupyter lab notebooks/`).
EXTRAS["notebooks"] = EXTRAS["all"] + ["jupyterlab>=4", "ipykernel>=6"]
# Not in "all": Ray Tune's PopulationBasedTraining scheduler for populations over several
# machines (tuning.ray_pbt; pandas and pyarrow come with it).
EXTRAS["ray"] = ["ray[tune]>=2.9"]
# Not in "all": only for building the documentation site (docs/).
EXTRAS["docs"] = ["sphinx>=7.2", "myst-nb>=1.1", "furo>=2024.1"]
EXTRAS["dev"] = (
    EXTRAS["all"]
    + EXTRAS["ray"]
    + EXTRAS["docs"]
    + [
        "pytest>=7",
        "pytest-xdist>=3",
        "hypothesis>=6",
        "nbmake>=1.4",
        "ipykernel>=6",
        "ruff>=0.4",
        "lion-pytorch>=0.2",  # reference for the Lion parity tests
        "schedulefree>=1.4",  # reference for the Schedule-Free parity tests
        "prodigyopt>=1.1",  # reference for the Prodigy parity tests
    ]
)

setup(
    name="torchopt-edu",
    version=VERSION,
    description="Deep-learning optimizers that read like the math and run as fast as torch.optim",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="torchopt-edu contributors",
    license="MIT",
    url=REPOSITORY,
    project_urls={
        "Source": REPOSITORY,
        "Issues": f"{REPOSITORY}/issues",
        "Changelog": f"{REPOSITORY}/blob/main/CHANGELOG.md",
    },
    python_requires=">=3.10",
    packages=find_packages(include=["torchopt_edu", "torchopt_edu.*"]),
    package_data={"torchopt_edu": ["py.typed", "learned/weights/*.pt"]},
    install_requires=[
        # Open ranges: users bring their own torch (install it first, see README).
        "torch>=2.4",
        "torch-geometric>=2.4",
        "numpy>=1.23",
        "tqdm>=4.60",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["torchopt-edu=torchopt_edu.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
