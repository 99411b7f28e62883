"""Reference models and their loaders, and the one registry of built-in model names.

``BUILTIN_MODELS`` names each built-in model once (``digits-cnn``, ``smollm2``); the CLI's
``model`` arguments, saved models' ``source`` and the ``digits-cnn:RECIPE`` reference all read it.
"""

from __future__ import annotations

from typing import Callable

from edgeq.errors import ModelFileError
from edgeq.models.digits_cnn import DigitsCNN, digits_data, load_digits_cnn


def _smollm2():
    from edgeq.models.smollm2 import load_smollm2

    return load_smollm2()[0]


BUILTIN_MODELS: dict[str, Callable[[], "object"]] = {"digits-cnn": load_digits_cnn, "smollm2": _smollm2}
# older spellings the CLI still accepts, documented in its help
ALIASES = {"digits": "digits-cnn"}


def builtin_name(name: str) -> str:
    """The registry name of ``name`` (an alias resolved); ModelFileError for an unknown one."""
    name = ALIASES.get(name, name)
    if name not in BUILTIN_MODELS:
        raise ModelFileError(f"unknown built-in model {name!r}; known: {', '.join(BUILTIN_MODELS)}")
    return name


def is_builtin(name: str, model: str) -> bool:
    """Whether ``name`` (a registry name or an alias) names the built-in ``model``."""
    return ALIASES.get(name, name) == model


def load_builtin(name: str):
    """The built-in model ``name`` in float32, eval mode."""
    return BUILTIN_MODELS[builtin_name(name)]()


__all__ = ["ALIASES", "BUILTIN_MODELS", "DigitsCNN", "builtin_name", "digits_data", "is_builtin", "load_builtin",
           "load_digits_cnn"]
