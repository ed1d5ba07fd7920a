"""Tools and schemas the function-calling tests and bench_tools.py both send: two tool
definitions in OpenAI's form and the corpus of JSON schemas in tests/schemas/ (each file holds
a prompt and the schema its answer must fit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
SCHEMAS = sorted(SCHEMA_DIR.glob("*.json"))

USER_DETAIL = {
    "type": "function",
    "function": {
        "name": "UserDetail",
        "parameters": {
            "properties": {
                "name": {"description": "The user's name", "type": "string"},
                "age": {"description": "The user's age", "type": "integer"},
            },
            "required": ["name", "age"],
            "type": "object",
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TOOLS: list[dict[str, Any]] = [USER_DETAIL, WEATHER]
SCHEMA_OF: dict[str, Any] = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
