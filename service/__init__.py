"""cartox: clinical decision support for CAR-T cell therapy toxicity."""

__version__ = "0.1.0"
