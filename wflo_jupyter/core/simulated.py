"""Deterministic simulated JSON: an instance valid against a JSON Schema, from a seed.

Used by the offline mock (``WFLO_PROVIDER=mock``) to answer structured-output requests
(``response_format`` json_schema / json_object, tool-call arguments) with JSON that the
caller's own parser accepts. It covers what OpenAI structured outputs and pydantic's
``model_json_schema()`` produce: objects, strings (enum, const, formats, lengths, a
best-effort ``pattern``), numbers with bounds and ``multipleOf``, booleans, null, arrays,
``anyOf`` / ``oneOf`` / ``allOf``, ``type`` lists and ``$ref`` into ``$defs`` /
``definitions`` (recursion stops at the non-recursive branch, empty arrays or null).
The same schema and seed always give the same instance. Standard library only.
"""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from wflo_jupyter.core.simulated_pattern import string_matching

_MAX_DEPTH = 5  # below this depth, only what is required, by the shortest way
# constraints a schema states in prose, as "{maximum: 7, minimum: 1}" (what a model reads
# when a provider's structured outputs cannot enforce them; the anthropic SDK writes so)
_HINT = re.compile(
    r"\b(minimum|maximum|exclusiveMinimum|exclusiveMaximum|multipleOf|minLength|maxLength"
    r"|minItems|maxItems|format): ([-\w.]+)"
)
_FORMATS: dict[str, str] = {
    "date": "2024-01-{day:02d}",
    "date-time": "2024-01-{day:02d}T10:{minute:02d}:00Z",
    "time": "10:{minute:02d}:00Z",
    "email": "simulated{n}@example.com",
    "idn-email": "simulated{n}@example.com",
    "uri": "https://example.com/simulated/{n}",
    "url": "https://example.com/simulated/{n}",
    "iri": "https://example.com/simulated/{n}",
    "uri-reference": "/simulated/{n}",
    "hostname": "simulated{n}.example.com",
    "idn-hostname": "simulated{n}.example.com",
    "ipv4": "192.0.2.{n}",
    "ipv6": "2001:db8::{n}",
    "duration": "PT{minute}M",
}


def json_object(seed: str, text: str) -> dict[str, Any]:
    """What a ``json_object`` request gets: a small object that says it is simulated."""
    return {"simulated": True, "answer": text, "seed": seed[:8]}


def instance(schema: Any, seed: str) -> Any:
    """A JSON value valid against ``schema`` (draft 2020-12 / draft 7 keywords)."""
    return _Maker(schema, seed).make(schema, 0, (), "value")


class _Maker:
    def __init__(self, root: Any, seed: str) -> None:
        self.root = root
        self.rng = random.Random(seed)

    # -- references and combinators ------------------------------------------------------
    def resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}  # remote references: anything goes
        node: Any = self.root
        for raw in ref[1:].split("/"):
            if not raw:
                continue
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, list):
                node = node[int(part)]
            elif isinstance(node, Mapping) and part in node:
                node = node[part]
            else:
                return {}
        return node

    def expand(self, schema: Any, refs: tuple[str, ...]) -> tuple[Any, tuple[str, ...]]:
        """Inline ``$ref`` and merge ``allOf`` so one schema holds every keyword."""
        seen = 0
        while isinstance(schema, Mapping) and "$ref" in schema and seen < 32:
            ref = str(schema["$ref"])
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            refs = (*refs, ref)
            target = self.resolve(ref)
            schema = _merge(target, rest) if rest else target
            seen += 1
        if isinstance(schema, Mapping) and schema.get("allOf"):
            merged: Any = {k: v for k, v in schema.items() if k != "allOf"}
            for part in schema["allOf"]:
                part, refs = self.expand(part, refs)
                merged = _merge(merged, part)
            return self.expand(merged, refs)
        return schema, refs

    def recursive(self, schema: Any, refs: tuple[str, ...]) -> bool:
        """Does ``schema`` lead back to a reference already being expanded?"""
        text = json.dumps(schema, sort_keys=True, default=str)
        return any(f'"$ref": "{ref}"' in text for ref in refs) or '"$ref": "#"' in text

    def make(self, schema: Any, depth: int, refs: tuple[str, ...], name: str) -> Any:
        schema, refs = self.expand(schema, refs)
        if depth > 4 * _MAX_DEPTH:  # a schema with no finite instance: give up politely
            return None
        if schema is True or schema is None:
            schema = {}
        if schema is False or not isinstance(schema, Mapping):
            return None
        schema = _with_hints(schema)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        branches = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(branches, list) and branches:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "oneOf")}
            branch = self.branch(branches, depth, refs)
            return self.make(_merge(rest, branch) if rest else branch, depth, refs, name)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [str(k) for k in kind] or ["string"]
            shallow = [k for k in kinds if k not in ("object", "array")] or kinds
            kind = "null" if "null" in kinds and depth >= _MAX_DEPTH else None
            if kind is None:
                real = [k for k in (shallow if depth >= _MAX_DEPTH else kinds) if k != "null"]
                kind = self.rng.choice(real) if real else "null"
        if kind is None:
            kind = _implied_type(schema)
        maker = getattr(self, f"make_{kind}", None)
        if maker is None:
            return None
        return maker(schema, depth, refs, name)

    def branch(self, branches: list[Any], depth: int, refs: tuple[str, ...]) -> Any:
        """One branch: any non-null one near the top, the shortest way deep down."""
        expanded = [self.expand(b, refs) for b in branches]
        if depth >= _MAX_DEPTH:
            for original, (body, _) in zip(branches, expanded, strict=True):
                if isinstance(body, Mapping) and body.get("type") == "null":
                    return original
            for original, (body, _) in zip(branches, expanded, strict=True):
                if not self.recursive(body, refs):
                    return original
            return branches[0]
        useful = [
            original
            for original, (body, _) in zip(branches, expanded, strict=True)
            if not (isinstance(body, Mapping) and body.get("type") == "null")
        ]
        return self.rng.choice(useful or branches)

    # -- the types -------------------------------------------------------------------------
    def make_null(self, schema: Mapping[str, Any], depth: int, refs: Any, name: str) -> None:
        return None

    def make_boolean(self, schema: Mapping[str, Any], depth: int, refs: Any, name: str) -> bool:
        return self.rng.random() < 0.5

    def make_object(
        self, schema: Mapping[str, Any], depth: int, refs: tuple[str, ...], name: str
    ) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = [str(k) for k in schema.get("required") or []]
        most = schema.get("maxProperties")
        least = int(schema.get("minProperties") or 0)
        keys = [k for k in properties if k in required] + [
            k for k in required if k not in properties
        ]
        for key in properties:
            if key in keys or (most is not None and len(keys) >= int(most)):
                continue
            wanted = len(keys) < least or (
                depth < _MAX_DEPTH
                and self.rng.random() < 0.7
                and not self.recursive(properties[key], refs)
            )
            if wanted:
                keys.append(key)
        result = {
            key: self.make(properties.get(key, _extra(schema)), depth + 1, refs, key)
            for key in keys
        }
        extra = _extra(schema)
        count = 0
        while len(result) < least and extra is not False and count < 64:
            count += 1
            result[f"key_{count}"] = self.make(extra, depth + 1, refs, f"key_{count}")
        if not properties and extra not in (False, True, {}) and least == 0 and depth < _MAX_DEPTH:
            for count in range(1, 1 + self.rng.randint(1, 2)):  # a dict[str, X]
                if most is None or len(result) < int(most):
                    result[f"key_{count}"] = self.make(extra, depth + 1, refs, f"key_{count}")
        return result

    def make_array(
        self, schema: Mapping[str, Any], depth: int, refs: tuple[str, ...], name: str
    ) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 4-7 tuple form
            prefix, items = items, schema.get("additionalItems", {})
        prefix = list(prefix or [])
        least = max(int(schema.get("minItems") or 0), 0)
        most = schema.get("maxItems")
        if items is False:
            most = len(prefix) if most is None else min(int(most), len(prefix))
        if depth >= _MAX_DEPTH or self.recursive(items, refs):
            count = max(least, 0)
        else:
            count = max(least, self.rng.randint(1, 3))
        if most is not None:
            count = min(count, int(most))
        count = max(count, min(len(prefix), count))
        unique = bool(schema.get("uniqueItems"))
        out: list[Any] = []
        tries = 0
        while len(out) < count and tries < count * 8 + 8:
            tries += 1
            position = len(out)
            part = prefix[position] if position < len(prefix) else items
            value = self.make(part, depth + 1, refs, name)
            if unique and any(_same(value, seen) for seen in out):
                continue
            out.append(value)
        return out

    def make_string(self, schema: Mapping[str, Any], depth: int, refs: Any, name: str) -> str:
        n = self.rng.randint(1, 250)
        day, minute = self.rng.randint(1, 28), self.rng.randint(0, 59)
        fmt = str(schema.get("format") or "")
        if fmt == "uuid":
            text = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        elif fmt in _FORMATS:
            text = _FORMATS[fmt].format(n=n, day=day, minute=minute)
        elif isinstance(schema.get("pattern"), str):
            text = string_matching(schema["pattern"], self.rng)
        else:
            text = f"simulated {name}".replace("_", " ")
        least, most = int(schema.get("minLength") or 0), schema.get("maxLength")
        if len(text) < least:
            text += "x" * (least - len(text))
        if most is not None and len(text) > int(most):
            text = text[: int(most)]
        return text

    def make_integer(self, schema: Mapping[str, Any], depth: int, refs: Any, name: str) -> int:
        return int(self.number(schema, integral=True))

    def make_number(
        self, schema: Mapping[str, Any], depth: int, refs: Any, name: str
    ) -> float | int:
        value = self.number(schema, integral=False)
        return int(value) if value.denominator == 1 else float(value)

    def number(self, schema: Mapping[str, Any], integral: bool) -> Fraction:
        low, high, low_open, high_open = _bounds(schema)
        step = _fraction(schema.get("multipleOf")) or (Fraction(1) if integral else None)
        if step is not None and integral and step.denominator != 1:
            step = Fraction(step.numerator)  # the least integer that is a multiple of it
        if low is None:
            low = Fraction(1) if high is None else min(Fraction(1), high - 100)
        if high is None:
            high = low + 100
        if step is None:  # a number with a fraction, strictly inside open bounds
            span = high - low
            if span <= 0:
                return low
            value = low + span * Fraction(self.rng.randint(1, 99), 100)
            return value if value not in (low, high) else (low + high) / 2
        first = math.ceil(low / step)
        last = math.floor(high / step)
        if low_open and first * step == low:
            first += 1
        if high_open and last * step == high:
            last -= 1
        if last < first:
            return low
        candidates = list(range(first, last + 1)) if last - first < 1000 else None
        for _ in range(16):
            k = self.rng.choice(candidates) if candidates else self.rng.randint(first, last)
            value = k * step
            as_float = float(value)
            quotient = as_float / float(step)
            if step.denominator == 1 or quotient == int(quotient):
                return value
        return first * step


def _merge(base: Any, extra: Any) -> Any:
    """Both schemas' keywords: properties and required united, the rest from ``extra``."""
    if not isinstance(base, Mapping) or not isinstance(extra, Mapping):
        return extra if isinstance(extra, Mapping) else base
    merged = {**base, **extra}
    if "properties" in base and "properties" in extra:
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        merged["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return merged


def _with_hints(schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` plus the constraints its description states in braces (best effort)."""
    description = schema.get("description")
    if not isinstance(description, str) or not description.rstrip().endswith("}"):
        return schema
    last = description.rstrip().rsplit("\n", 1)[-1]
    hints: dict[str, Any] = {}
    for key, raw in _HINT.findall(last):
        if key in schema:
            continue
        if key == "format":
            hints[key] = raw
            continue
        try:
            number = float(raw)
        except ValueError:
            continue
        hints[key] = int(number) if number.is_integer() else number
    return {**schema, **hints} if hints else schema


def _implied_type(schema: Mapping[str, Any]) -> str:
    if "properties" in schema or "additionalProperties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    if any(k in schema for k in ("minimum", "maximum", "multipleOf")):
        return "number"
    return "string"


def _extra(schema: Mapping[str, Any]) -> Any:
    extra = schema.get("additionalProperties", True)
    return {} if extra is True else extra


def _fraction(value: Any) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return Fraction(str(value))


def _bounds(
    schema: Mapping[str, Any],
) -> tuple[Fraction | None, Fraction | None, bool, bool]:
    low, high = _fraction_or_none(schema.get("minimum")), _fraction_or_none(schema.get("maximum"))
    low_open = high_open = False
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_low is True:  # draft 4: a flag on minimum
        low_open = True
    elif _fraction_or_none(ex_low) is not None and (low is None or Fraction(str(ex_low)) >= low):
        low, low_open = Fraction(str(ex_low)), True
    if ex_high is True:
        high_open = True
    elif _fraction_or_none(ex_high) is not None and (
        high is None or Fraction(str(ex_high)) <= high
    ):
        high, high_open = Fraction(str(ex_high)), True
    return low, high, low_open, high_open


def _fraction_or_none(value: Any) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return Fraction(str(value))


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def compact(value: Any) -> str:
    """JSON text as the providers send it."""
    return json.dumps(value, ensure_ascii=False)
