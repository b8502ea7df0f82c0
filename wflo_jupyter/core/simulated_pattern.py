"""A string matching a JSON Schema ``pattern`` (best effort), for simulated answers.

Walks the regular expression's parse tree (the standard library's own parser) and
builds a short string that takes the first or a seeded branch at each choice; the result
is checked with ``re.search`` (JSON Schema patterns are not anchored) and, when the
walk could not satisfy it (look-arounds, back-references), a plain word is returned.
"""

from __future__ import annotations

import importlib
import random
import re
import string
from typing import Any

_PARSER: Any = importlib.import_module("re._parser")  # typed stubs cover only sre_parse
_CATEGORY = {
    "CATEGORY_DIGIT": string.digits,
    "CATEGORY_NOT_DIGIT": string.ascii_letters,
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": string.ascii_letters + string.digits,
    "CATEGORY_WORD": string.ascii_letters + string.digits + "_",
    "CATEGORY_NOT_WORD": "-.,:; ",
}
_PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


def string_matching(pattern: str, rng: random.Random) -> str:
    """A string ``re.search(pattern, it)`` accepts, or ``"simulated"`` if none was found."""
    try:
        compiled = re.compile(pattern)
        tree = _PARSER.parse(pattern)
    except (re.error, RecursionError, ValueError):
        return "simulated"
    for _ in range(8):
        try:
            text = _walk(list(tree), rng)
        except (ValueError, IndexError):
            continue
        if compiled.search(text):
            return text
    for guess in ("simulated", "0", "a", "A1", "2024-01-01", ""):
        if compiled.search(guess):
            return guess
    return "simulated"


def _walk(items: list[Any], rng: random.Random) -> str:
    return "".join(_one(op, arg, rng) for op, arg in items)


def _one(op: Any, arg: Any, rng: random.Random) -> str:
    name = getattr(op, "name", str(op))
    if name == "LITERAL":
        return chr(arg)
    if name == "NOT_LITERAL":
        return next(c for c in "xa0" if ord(c) != arg)
    if name == "ANY":
        return rng.choice(string.ascii_lowercase)
    if name == "IN":
        return _from_set(arg, rng)
    if name == "BRANCH":
        return _walk(list(rng.choice(arg[1])), rng)
    if name == "SUBPATTERN":
        return _walk(list(arg[-1]), rng)
    if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
        low, high, body = arg
        top = low + 3 if high == _PARSER.MAXREPEAT else min(high, low + 3)
        count = rng.randint(low, max(low, top))
        return "".join(_walk(list(body), rng) for _ in range(count))
    if name == "ATOMIC_GROUP":
        return _walk(list(arg), rng)
    if name in ("AT", "ASSERT", "ASSERT_NOT", "GROUPREF", "GROUPREF_EXISTS"):
        return ""
    if name == "CATEGORY":
        return rng.choice(_CATEGORY.get(getattr(arg, "name", ""), "a"))
    raise ValueError(f"no generator for {name}")


def _from_set(items: list[Any], rng: random.Random) -> str:
    negate = bool(items) and getattr(items[0][0], "name", "") == "NEGATE"
    choices: list[str] = []
    for op, arg in items:
        name = getattr(op, "name", str(op))
        if name == "LITERAL":
            choices.append(chr(arg))
        elif name == "RANGE":
            choices.extend(chr(c) for c in range(arg[0], min(arg[1], arg[0] + 64) + 1))
        elif name == "CATEGORY":
            choices.extend(_CATEGORY.get(getattr(arg, "name", ""), ""))
    if negate:
        allowed = [c for c in _PRINTABLE if c not in choices and c.isalnum()]
        return rng.choice(allowed or ["~"])
    if not choices:
        raise ValueError("empty character set")
    return rng.choice(choices)
