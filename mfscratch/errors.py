"""The one exception type users see: a one-line message naming the problem and what to do."""

from __future__ import annotations

__all__ = ["MfscratchError", "DataError", "ConfigError", "ModelFileError", "DivergenceError", "OutputError"]


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


class OutputError(MfscratchError, OSError):
    """An output cannot or must not be written (a folder, a device, an input, a full disk); nothing is replaced.

    Also an ``OSError``, so that code catching the write's own error keeps working.
    """
