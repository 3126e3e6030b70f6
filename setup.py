"""The package list, found rather than listed, so a module moved into a new subpackage still ships
(tests/test_layers.py checks every package under bench/ is found).  The rest is in pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["bench", "bench.*"]) + ["bench._models", "bench._results"])
