"""Whether a new JSON Schema of an event still accepts what consumers of the old one
rely on: ``breaking_changes(old, new)`` lists, one line each, what would break them.

Breaking: a property removed; a required field no longer required, or a field newly
required (events already in a topic lack it); a type, ``const`` or ``pattern`` changed;
an ``enum`` value removed; bounds (``minimum``, ``maximum``, ``minLength``) tightened;
``additionalProperties`` closed; a condition (``if``) changed. Not breaking: a new
optional property, descriptions, an ``enum`` value added, bounds loosened. The walk
follows ``properties``, ``items`` and ``then``/``else``: the keywords these schemas use."""

from __future__ import annotations

from typing import Any

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _types(schema: dict[str, Any]) -> frozenset[str] | None:
    """The JSON types ``schema`` allows (``None``: any)."""
    declared = schema.get("type")
    if isinstance(declared, str):
        return frozenset([declared])
    if isinstance(declared, list):
        return frozenset(declared)
    if "const" in schema:
        return frozenset([_JSON_TYPES.get(type(schema["const"]), "object")])
    return None


def _bounds(path: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    found = []
    for key, tighter in (
        ("minimum", lambda o, n: n > o),
        ("minLength", lambda o, n: n > o),
        ("maximum", lambda o, n: n < o),
    ):
        if key in new and (key not in old or tighter(old[key], new[key])):
            found.append(f"{path}: {key} tightened from {old.get(key)} to {new[key]}")
    return found


def breaking_changes(old: dict[str, Any], new: dict[str, Any], path: str = "$") -> list[str]:
    """What in ``new`` breaks consumers (or events) of ``old``, one line each."""
    found: list[str] = []
    old_types, new_types = _types(old), _types(new)
    if old_types != new_types and new_types is not None:
        before = "any" if old_types is None else "|".join(sorted(old_types))
        found.append(f"{path}: type changed from {before} to {'|'.join(sorted(new_types))}")
    for key in ("const", "pattern"):
        if key in new and old.get(key, object()) != new[key]:
            found.append(f"{path}: {key} changed from {old.get(key)!r} to {new[key]!r}")
    if "enum" in new and ("enum" not in old or any(v not in new["enum"] for v in old["enum"])):
        found.append(f"{path}: enum values removed")
    found += _bounds(path, old, new)
    if (
        old.get("additionalProperties", True) is not False
        and new.get("additionalProperties") is False
    ):
        found.append(f"{path}: additionalProperties closed")
    old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
    found += [f"{path}: {n!r} no longer required" for n in sorted(old_required - new_required)]
    found += [f"{path}: {n!r} newly required" for n in sorted(new_required - old_required)]
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name, sub in old_props.items():
        if name not in new_props:
            found.append(f"{path}.{name}: property removed")
        else:
            found += breaking_changes(sub, new_props[name], f"{path}.{name}")
    if isinstance(old.get("items"), dict) and isinstance(new.get("items"), dict):
        found += breaking_changes(old["items"], new["items"], f"{path}[]")
    if old.get("if") != new.get("if"):
        found.append(f"{path}: condition (if) changed")
    for branch in ("then", "else"):
        if branch in old or branch in new:
            found += breaking_changes(old.get(branch, {}), new.get(branch, {}), f"{path}({branch})")
    return found
