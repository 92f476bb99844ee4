"""raystudy: declarative robustness studies run as Ray Tune trials."""

__version__ = "0.1.0"
