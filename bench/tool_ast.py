"""BFCL's cases as OpenAI requests, and its AST rules for scoring the answers.

The data (../shared/data/function-calling, described in its README.md) is read where it lies,
never copied here. The rules follow BFCL's `ast_checker.py` for one expected call: exactly
the expected number of calls, the expected function, every required parameter, no parameter
outside the schema, each value among the accepted ones (strings compared case-insensitively
without spaces and punctuation; `""` among the accepted values lets a parameter be left out;
an integer stands for a float), nested objects checked the same way.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FILES = {"simple": "live_simple", "multiple": "live_multiple.first200"}
# BFCL's schema dialect -> JSON schema types
TYPES = {"dict": "object", "float": "number", "tuple": "array"}


@dataclass
class Case:
    id: str
    category: str  # "simple" (one function offered) or "multiple" (several)
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]  # OpenAI tool dicts, names with "." written "_"
    functions: dict[str, dict[str, Any]]  # the tool's name as sent -> BFCL's function
    expected: list[dict[str, Any]]  # BFCL's ground_truth: [{function: {param: [accepted...]}}]


def default_data() -> Path:
    """../shared/data/function-calling beside the repo (for a git worktree: beside its main checkout)."""
    common = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    for root in (REPO, Path(common).parent if common else REPO):
        if (root.parent / "shared" / "data" / "function-calling").is_dir():
            return root.parent / "shared" / "data" / "function-calling"
    return REPO.parent / "shared" / "data" / "function-calling"


def load(data: Path, limit: int | None) -> list[Case]:
    cases: list[Case] = []
    for category, stem in FILES.items():
        questions = (data / f"{stem}.jsonl").read_text().splitlines()
        answers = [json.loads(a) for a in (data / f"{stem}.answers.jsonl").read_text().splitlines()]
        truth = {a["id"]: a["ground_truth"] for a in answers}
        for line in questions[:limit]:
            q = json.loads(line)
            functions = {f["name"].replace(".", "_"): f for f in q["function"]}
            tools = [
                {"type": "function", "function": {
                    "name": name, "description": f.get("description", ""), "parameters": openai_schema(f["parameters"]),
                }}
                for name, f in functions.items()
            ]
            cases.append(Case(q["id"], category, q["question"][0], tools, functions, truth[q["id"]]))
    return cases


def openai_schema(schema: Any) -> Any:
    """BFCL's schema as JSON schema: `dict`, `float`, `tuple` renamed, `any` left untyped."""
    if isinstance(schema, list):
        return [openai_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: openai_schema(v) for k, v in schema.items() if k not in ("type", "properties")}
    if isinstance(schema.get("properties"), dict):
        out["properties"] = {k: openai_schema(v) for k, v in schema["properties"].items()}
    t = schema.get("type")
    if isinstance(t, str) and t != "any":
        out["type"] = TYPES.get(t, t)
    return out


def score(case: Case, calls: list[dict[str, Any]]) -> tuple[bool, str]:
    """(right, why not) for the answer's calls: [{"name": ..., "arguments": "<json>"}]."""
    if len(calls) != len(case.expected):
        return False, f"{len(calls)} calls, {len(case.expected)} expected"
    call = calls[0]
    (want_name, accepted), = case.expected[0].items()
    function = case.functions.get(call["name"])
    if function is None or function["name"] != want_name:
        return False, f"called {call['name']}, expected {want_name}"
    try:
        args = json.loads(call["arguments"] or "{}")
    except ValueError:
        return False, "arguments are not JSON"
    if not isinstance(args, dict):
        return False, "arguments are not an object"
    params = function["parameters"]
    return _check_object(args, accepted, params.get("properties") or {}, params.get("required") or [], "")


def invented(case: Case, calls: list[dict[str, Any]]) -> bool:
    """Whether a call to the expected function writes an optional parameter (one its schema does
    not require) that the expected call leaves out, with a value it does not accept."""
    (want_name, accepted), = case.expected[0].items()
    for call in calls:
        function = case.functions.get(call["name"])
        if function is None or function["name"] != want_name:
            continue
        try:
            args = json.loads(call["arguments"] or "{}")
        except ValueError:
            continue
        required = function["parameters"].get("required") or []
        for name, value in args.items() if isinstance(args, dict) else ():
            values = accepted.get(name)
            if name not in required and (values is None or ("" in values and not _check_value(
                    value, values, (function["parameters"].get("properties") or {}).get(name) or {}, name)[0])):
                return True
    return False


def _check_object(args: dict[str, Any], accepted: dict[str, Any], props: dict[str, Any],
                  required: list[str], where: str) -> tuple[bool, str]:
    for name in required:
        if name not in args:
            return False, f"missing required {where}{name}"
    for name, value in args.items():
        if name not in accepted:
            return False, f"unexpected parameter {where}{name}"
        ok, why = _check_value(value, accepted[name], props.get(name) or {}, f"{where}{name}")
        if not ok:
            return False, why
    for name, values in accepted.items():
        if name not in args and isinstance(values, list) and values and "" not in values:
            return False, f"missing {where}{name}"
    return True, ""


def _check_value(value: Any, accepted: Any, schema: dict[str, Any], where: str) -> tuple[bool, str]:
    # The data writes a few nested values bare (10.5 for [10.5]) and an empty list as [] (for [[]]).
    accepted = accepted if isinstance(accepted, list) else [accepted]
    accepted = accepted or [[]]
    if any(isinstance(a, dict) for a in accepted) and isinstance(value, dict):
        props = schema.get("properties") or {}
        for option in accepted:
            if isinstance(option, dict) and _check_object(value, option, props, [], f"{where}.")[0]:
                return True, ""
        return _check_object(value, next(a for a in accepted if isinstance(a, dict)), props, [], f"{where}.")
    if schema.get("type") == "float":  # BFCL's float takes an integer too
        value, accepted = _as_float(value), [_as_float(a) for a in accepted]
    if any(_same(value, a) for a in accepted):
        return True, ""
    return False, f"{where}={json.dumps(value)[:60]}, accepted {json.dumps(accepted)[:80]}"


def _same(value: Any, want: Any) -> bool:
    if isinstance(want, str) and isinstance(value, str):
        return _standard(value) == _standard(want)
    if isinstance(want, list) and isinstance(value, list):
        return len(want) == len(value) and all(_same(v, w) for v, w in zip(value, want, strict=True))
    if isinstance(value, bool) or isinstance(want, bool):
        return value is want
    # BFCL: an integer is no float (unless the schema says float, see _check_value), nor the reverse
    return type(value) is type(want) and value == want


def _as_float(v: Any) -> Any:
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _standard(s: str) -> str:
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')
