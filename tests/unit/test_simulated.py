"""Simulated JSON is valid against the schema it was made for: hand-written schemas, the
ones pydantic generates (nested, optional, enum, recursive, lists, dicts, tuples) and
OpenAI's strict form of them; checked with ``jsonschema`` and by pydantic itself."""

from __future__ import annotations

import json
import random
import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

import jsonschema
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel, Field

from wflo_jupyter.core.simulated import instance, json_object
from wflo_jupyter.core.simulated_pattern import string_matching

SEEDS = [f"seed-{n}" for n in range(25)]


def valid(schema: Any, value: Any) -> None:
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    postcode: str = Field(pattern=r"^\d{5}$")
    country: Literal["FR", "DE", "US"] = "FR"


class Node(BaseModel):
    name: str
    children: list[Node] = []
    parent: Node | None = None


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Person(BaseModel):
    name: str = Field(min_length=3, max_length=12)
    age: int = Field(ge=0, le=130)
    score: float = Field(gt=0, lt=1)
    price: float = Field(multiple_of=0.01, ge=0)
    step: int = Field(multiple_of=5, gt=10)
    colour: Colour
    born: date
    seen: datetime
    ident: UUID
    email: str = Field(json_schema_extra={"format": "email"})
    tags: list[str] = Field(min_length=2, max_length=4)
    home: Address | None
    places: list[Address]
    counts: dict[str, int]
    tree: Node
    pair: tuple[int, str]
    either: int | str
    unique: set[int]
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]
    nickname: str | None = None


MODELS: list[type[BaseModel]] = [Person, Address, Node, Cat]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_pydantic_models_round_trip(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    for seed in SEEDS:
        value = instance(schema, seed)
        valid(schema, value)
        model.model_validate_json(json.dumps(value))


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_openai_strict_schemas_round_trip(model: type[BaseModel]) -> None:
    schema = to_strict_json_schema(model)
    assert schema.get("additionalProperties") is False
    for seed in SEEDS[:10]:
        value = instance(schema, seed)
        valid(schema, value)
        assert set(value) == set(schema["properties"])  # strict: every property present
        model.model_validate_json(json.dumps(value))


HAND_WRITTEN: list[dict[str, Any]] = [
    {"type": "object", "properties": {"a": {"type": "integer", "exclusiveMinimum": 5}}},
    {"type": "number", "minimum": 0.5, "maximum": 0.75},
    {"type": "number", "multipleOf": 0.25, "minimum": -3, "maximum": -1},
    {"type": "integer", "maximum": -500},
    {"type": "integer", "multipleOf": 2.5, "minimum": 1, "maximum": 30},
    {"type": ["string", "null"], "maxLength": 2},
    {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 3, "uniqueItems": True},
    {"type": "array", "prefixItems": [{"const": "x"}, {"type": "boolean"}], "items": False},
    {"type": "object", "additionalProperties": {"type": "string"}, "minProperties": 2},
    {"type": "object", "required": ["z"], "properties": {"z": {"type": "null"}}},
    {"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0.1, "maximum": 0.9}]},
    {"allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]}, {"required": ["b"]}]},
    {"type": "string", "format": "uri"},
    {"type": "string", "format": "date-time"},
    {"type": "string", "format": "uuid"},
    {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
    {"type": "string", "minLength": 40},
    {
        "$defs": {"L": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/P"}]}},
        "definitions": {
            "P": {
                "type": "object",
                "properties": {"head": {"type": "integer"}, "tail": {"$ref": "#/$defs/L"}},
                "required": ["head", "tail"],
            }
        },
        "$ref": "#/$defs/L",
    },
    {
        "type": "object",
        "properties": {"self": {"$ref": "#"}, "n": {"type": "integer"}},
        "required": ["n", "self"],
        "additionalProperties": False,
    }
    | {"properties": {"self": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}, "n": {}}},
]


@pytest.mark.parametrize("schema", HAND_WRITTEN, ids=lambda s: json.dumps(s)[:40])
def test_hand_written_schemas(schema: dict[str, Any]) -> None:
    # the recursive list schema points at definitions, not $defs: rewrite it so both work
    text = json.dumps(schema).replace('"#/$defs/P"', '"#/definitions/P"')
    schema = json.loads(text)
    for seed in SEEDS:
        valid(schema, instance(schema, seed))


def test_same_seed_same_instance_and_seeds_differ() -> None:
    schema = Person.model_json_schema()
    assert instance(schema, "a") == instance(schema, "a")
    assert len({json.dumps(instance(schema, s)) for s in SEEDS}) > 20


def test_free_strings_say_simulated() -> None:
    value = instance(Address.model_json_schema(), "x")
    assert value["street"] == "simulated street"
    assert json_object("abcdef1234", "Simulated answer")["simulated"] is True


def test_a_recursive_schema_ends() -> None:
    value = instance(Node.model_json_schema(), "deep")
    depth, node = 0, value
    while node.get("children") or node.get("parent"):
        node = (node.get("children") or [node.get("parent")])[0]
        depth += 1
    assert depth <= 6


@pytest.mark.parametrize(
    "pattern",
    [r"^[A-Z]{3}-\d+$", r"^(foo|bar)_[a-z]+$", r"[^abc]x", r"^\w+@\w+\.com$", r"^\d{3}-\d{4}$"],
)
def test_patterns_best_effort(pattern: str) -> None:
    for n in range(10):
        assert re.search(pattern, string_matching(pattern, random.Random(n)))


def test_constraints_stated_in_a_description_are_kept() -> None:
    # the anthropic SDK moves what structured outputs cannot enforce into the description
    schema = {"type": "integer", "description": "Days\n\n{maximum: 7, minimum: 1}"}
    assert all(1 <= instance(schema, seed) <= 7 for seed in SEEDS)
    text = {"type": "string", "description": "{format: email, maxLength: 30}"}
    assert all("@" in instance(text, seed) for seed in SEEDS)
