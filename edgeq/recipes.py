"""Recipes: frozen dataclasses that say how to quantize, and the named presets.

A recipe names the method and its knobs and says whether it ``needs_calibration``;
``edgeq.quantize`` looks its type up in the quantizer registry (``edgeq.quant.base``), so a new
method is one new module (its recipe, quantizer, layers and their export rules). Presets are
short names for recipes (``w8a8``, ``w4g128-rtn``, ...), resolved by :func:`resolve_recipe`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from edgeq.errors import RecipeError


@dataclass(frozen=True)
class Recipe:
    """Fields every recipe has. ``skip`` holds fnmatch patterns of module names left in float."""

    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_recipe_values(self)

    @property
    def method(self) -> str:
        return type(self).METHOD  # type: ignore[attr-defined]

    @property
    def needs_calibration(self) -> bool:
        """Whether the quantizer needs ``calib`` (sample inputs): callers pass calibration data by
        this, never by method name. Data-free recipes say False (the default)."""
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_RECIPE_TYPES: dict[str, type[Recipe]] = {}
PRESETS: dict[str, Recipe] = {}


def register_recipe_type(cls: type[Recipe]) -> type[Recipe]:
    _RECIPE_TYPES[cls.METHOD] = cls  # type: ignore[attr-defined]
    return cls


def register_preset(name: str, recipe: Recipe) -> None:
    PRESETS[name] = recipe


def list_presets() -> list[dict[str, Any]]:
    """One row per preset, by name: its method, weight bits, group size (None: per output
    channel) and whether it needs calibration data (``edgeq quantize --list``)."""
    return [{"name": name, "method": recipe.method,
             "bits": getattr(recipe, "bits", getattr(recipe, "weight_bits", getattr(recipe, "WEIGHT_BITS", None))),
             "group_size": getattr(recipe, "group_size", None), "needs_calibration": recipe.needs_calibration}
            for name, recipe in sorted(PRESETS.items())]


def resolve_recipe(recipe: Recipe | str) -> Recipe:
    """A recipe object, a preset name, or a JSON recipe (as written by ``Recipe.to_json``)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str):
        if recipe in PRESETS:
            return PRESETS[recipe]
        if recipe.lstrip().startswith(("{", "[")):
            try:
                data = json.loads(recipe)
            except json.JSONDecodeError as exc:
                raise RecipeError(f"recipe JSON is malformed: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
            if not isinstance(data, dict):
                raise RecipeError(f"recipe JSON must be an object with a \"method\", got {type(data).__name__}")
            return recipe_from_dict(data)
        known = ", ".join(sorted(PRESETS))
        raise RecipeError(f"unknown recipe preset {recipe!r}; known presets: {known}")
    raise RecipeError(f"expected a Recipe or a preset name, got {type(recipe).__name__}")


def recipe_from_dict(data: dict[str, Any]) -> Recipe:
    data = dict(data)
    method = data.pop("method", None)
    cls = _RECIPE_TYPES.get(method)  # type: ignore[arg-type]
    if cls is None:
        raise RecipeError(f"unknown recipe method {method!r}; known: {', '.join(sorted(_RECIPE_TYPES))}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise RecipeError(f"recipe {method!r} has no field(s) {', '.join(sorted(unknown))}")
    for f in dataclasses.fields(cls):
        if f.name in data and isinstance(data[f.name], list):
            data[f.name] = tuple(tuple(v) if isinstance(v, list) else v for v in data[f.name])
        if f.name in data:
            _check_type(method, f, data[f.name])
    return cls(**data)


def _check_type(method: str, f: dataclasses.Field, value: Any) -> None:
    """A JSON value has the type of the field's default (an int where a float is expected is
    fine; a bool is not a number; None only where the field allows it)."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if value is None:
        if "None" in str(f.type):
            return
    elif default is None:
        return
    elif isinstance(default, bool):
        if isinstance(value, bool):
            return
    elif isinstance(default, (int, float)):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (isinstance(default, float) or isinstance(value, int)):
            return
    elif isinstance(value, type(default)):
        return
    raise RecipeError(f"recipe {method!r}: {f.name} = {value!r} is not a valid {f.type}")


# Values no recipe can take, by field name (every method names its knobs the same way).
_POSITIVE = ("group_size", "block_size")
_NON_NEGATIVE = ("rank", "clip_steps", "power_iters", "salient_blocks", "seed", "damp")


def check_recipe_values(recipe: Recipe) -> None:
    """A RecipeError for impossible values: bits outside 1..8, a group or block < 1, a
    negative count, a percentile outside (0, 100]."""
    method = type(recipe).__dict__.get("METHOD", type(recipe).__name__)
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value != value:  # NaN
            raise RecipeError(f"recipe {method!r}: {f.name} is NaN")
        if f.name.endswith("bits") and not (isinstance(value, int) and 1 <= value <= 8):
            raise RecipeError(f"recipe {method!r}: {f.name} = {value} is impossible: weights have 1 to 8 bits")
        if f.name in _POSITIVE and value < 1:
            raise RecipeError(f"recipe {method!r}: {f.name} = {value} is impossible: it must be at least 1")
        if f.name in _NON_NEGATIVE and value < 0:
            raise RecipeError(f"recipe {method!r}: {f.name} = {value} is negative")
        if f.name.endswith("percentile") and not 0 < value <= 100:
            raise RecipeError(f"recipe {method!r}: {f.name} = {value} is not a percentile in (0, 100]")
