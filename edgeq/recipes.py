"""Recipes: frozen dataclasses that say how to quantize, and the named presets.

A recipe names the method and its knobs; ``edgeq.quantize`` looks its type up in the quantizer
registry (``edgeq.quant``), so a new method is one new dataclass and one handler. Presets are
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

    @property
    def method(self) -> str:
        return type(self).METHOD  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class W8A8Recipe(Recipe):
    """Static W8A8: int8 per-output-channel symmetric weights, per-tensor affine uint8
    activations calibrated on sample inputs (min/max, or a percentile to cut outliers).
    BatchNorm is folded into the preceding conv first. Compute stays in float (QDQ)."""

    METHOD = "w8a8"
    act_percentile: float = 100.0


_RECIPE_TYPES: dict[str, type[Recipe]] = {}
PRESETS: dict[str, Recipe] = {}


def register_recipe_type(cls: type[Recipe]) -> type[Recipe]:
    _RECIPE_TYPES[cls.METHOD] = cls  # type: ignore[attr-defined]
    return cls


def register_preset(name: str, recipe: Recipe) -> None:
    PRESETS[name] = recipe


def resolve_recipe(recipe: Recipe | str) -> Recipe:
    """A recipe object, a preset name, or a JSON recipe (as written by ``Recipe.to_json``)."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str):
        if recipe in PRESETS:
            return PRESETS[recipe]
        if recipe.lstrip().startswith("{"):
            return recipe_from_dict(json.loads(recipe))
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
            data[f.name] = tuple(data[f.name])
    return cls(**data)


register_recipe_type(W8A8Recipe)
register_preset("w8a8", W8A8Recipe())
