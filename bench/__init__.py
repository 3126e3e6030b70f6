"""JEAT-Bench: classifiers read as energy-based models, evaluated for robustness and generation."""

__version__ = "0.1.0"
