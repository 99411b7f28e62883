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

