"""The one exception type users see: a one-line message naming the problem and what to do."""

from __future__ import annotations

__all__ = ["MfscratchError", "DataError", "ConfigError", "ModelFileError", "DivergenceError"]


class MfscratchError(ValueError):
    """Base class: the CLI prints ``error: <message>`` and exits with status 2."""


class DataError(MfscratchError):
    """The ratings data (or a dataset download) cannot be used as given."""


class ConfigError(MfscratchError):
    """A setting is out of range or unknown."""


class ModelFileError(MfscratchError):
    """A saved model file is missing, truncated, or not an mfscratch model."""


class DivergenceError(MfscratchError):
    """The loss became NaN or infinite during training."""
