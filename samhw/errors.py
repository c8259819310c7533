"""The package's model error, apart so that :mod:`samhw.models` and :mod:`samhw.shipped_reader` share it."""
from __future__ import annotations

__all__ = ["ModelError"]


class ModelError(Exception):
    """A model cannot be built or loaded; the message says which file and what to do."""
