"""Function calling and structured output on the real llama.cpp engine with SmolLM2.

Every JSON answer is checked with `jsonschema` (formats included): the grammar must make
even a 135M-parameter model write valid calls and documents, whatever it "wants" to say.
"""

from __future__ import annotations

import ctypes
import http.server
import json
import threading
from typing import Any

import httpx
import jsonschema
import pytest
from jsonschema import Draft202012Validator

from nexa.engines.base import SamplingParams
from nexa.engines.llama.sampler import ConstrainedSampler
from nexa.structured.schema import schema_grammar
from support.sse import sse_chunks
from support.tools import SCHEMA_DIR, SCHEMA_OF, SCHEMAS, TOOLS, USER_DETAIL

GREEDY = {"temperature": 0, "seed": 1}


def validate(instance: Any, schema: Any) -> None:
    cls = jsonschema.validators.validator_for(schema, default=Draft202012Validator)
    cls.check_schema(schema)
    cls(schema, format_checker=cls.FORMAT_CHECKER).validate(instance)


def check_calls(message: dict[str, Any], names: set[str] | None = None) -> list[dict[str, Any]]:
    """The message's tool calls, each well-formed and with arguments that satisfy their tool."""
    assert message["content"] is None
    calls = message["tool_calls"]
    assert calls
    for call in calls:
        assert call["type"] == "function" and call["id"].startswith("call_")
        name = call["function"]["name"]
        assert name in (names or SCHEMA_OF)
        validate(json.loads(call["function"]["arguments"]), SCHEMA_OF[name])
    return calls


def chat(client, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# -- the original Nexa server's endpoint ---------------------------------------------------------------------


def test_seed_function_calling_example(client):
    # the Nexa server API's exact request for /v1/function-calling.
    body = {
        "messages": [{"role": "user", "content": "Extract Jason is 25 years old"}],
        "tools": [USER_DETAIL],  # the example's own tool
        "tool_choice": "auto",
    }
    r = client.post("/v1/function-calling", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl")
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["role"] == "assistant"
    [call] = check_calls(message, {"UserDetail"})  # one call: the endpoint calls "the most appropriate function"
    # The legacy field carries the real name (the original sent "").
    assert message["function_call"] == {"name": "UserDetail", "arguments": call["function"]["arguments"]}
    u = data["usage"]
    assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_function_calling_endpoint_refuses_none_and_missing_tools(client):
    messages = [{"role": "user", "content": "hi"}]
    r = client.post("/v1/function-calling", json={"messages": messages, "tools": [USER_DETAIL], "tool_choice": "none"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    r = client.post("/v1/function-calling", json={"messages": messages})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


# -- tool_choice on /v1/chat/completions ---------------------------------------------------


@pytest.mark.parametrize("sampling", [GREEDY, {"temperature": 1.0, "seed": 7}, {"temperature": 1.5, "seed": 8}])
def test_forced_tool_choice_always_calls_that_function(client, sampling):
    choice = {"type": "function", "function": {"name": "get_weather"}}
    # The request is about a user, not weather: the call must still be get_weather.
    messages = [{"role": "user", "content": "Extract Jason is 25 years old"}]
    data = chat(client, messages=messages, tools=TOOLS, tool_choice=choice, max_tokens=200, **sampling)
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    calls = check_calls(data["choices"][0]["message"], {"get_weather"})
    assert all(c["function"]["name"] == "get_weather" for c in calls)


def test_required_calls_some_tool(client):
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]
    data = chat(client, messages=messages, tools=TOOLS, tool_choice="required", max_tokens=200, **GREEDY)
    assert data["choices"][0]["finish_reason"] == "tool_calls"
    check_calls(data["choices"][0]["message"])


@pytest.mark.parametrize("sampling", [GREEDY, {"temperature": 1.2, "seed": 3}])
def test_none_never_calls(client, sampling):
    messages = [{"role": "user", "content": "Call UserDetail now for Jason, 25. Reply with a tool call only."}]
    data = chat(client, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=48, **sampling)
    message = data["choices"][0]["message"]
    assert "tool_calls" not in message and isinstance(message["content"], str)
    assert data["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_auto_answers_with_valid_calls_or_text(client, seed):
    messages = [{"role": "user", "content": "Extract Jason is 25 years old"}]
    data = chat(client, messages=messages, tools=TOOLS, max_tokens=200, temperature=1.0, seed=seed)
    choice = data["choices"][0]
    if choice["message"].get("tool_calls") and choice["finish_reason"] == "length":
        assert choice["message"]["content"] is None  # a call cut by max_tokens, as far as it was written
    elif choice["message"].get("tool_calls"):
        check_calls(choice["message"])
        assert choice["finish_reason"] == "tool_calls"
    else:
        assert isinstance(choice["message"]["content"], str) and not choice["message"]["content"].startswith("<")
        assert choice["finish_reason"] in ("stop", "length")


def test_parallel_tool_calls_false_gives_exactly_one_call(client):
    messages = [{"role": "user", "content": "Weather in Paris and in Rome?"}]
    for parallel in (False, True):
        data = chat(
            client,
            messages=messages,
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=parallel,
            max_tokens=300,
            **GREEDY,
        )
        calls = check_calls(data["choices"][0]["message"])
        assert 1 <= len(calls) <= (4 if parallel else 1)
        assert len({c["id"] for c in calls}) == len(calls)


def test_tool_results_feed_the_next_turn(client, engine):
    from nexa.schemas.text import ChatRequest
    from nexa.structured.plan import plan_chat
    from nexa.structured.prompting import render

    messages = [
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temperature": 21, "sky": "sunny"}'},
    ]
    body = ChatRequest(messages=messages, tools=TOOLS, tool_choice="auto")
    plan = plan_chat(body)
    assert plan is not None and plan.call_names == {"call_abc": "get_weather"}
    prompt, _, _ = render(engine, body.messages, plan)
    # SmolLM2's template knows nothing of tools: the call and its result are written out.
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}' in prompt
    assert '<tool_response>\n{"name": "get_weather", "content": "{\\"temperature\\": 21' in prompt
    assert "<tools>" in prompt and '"name": "UserDetail"' in prompt
    data = chat(client, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=32, **GREEDY)
    assert isinstance(data["choices"][0]["message"]["content"], str)
    with_result = data["usage"]["prompt_tokens"]
    data = chat(client, messages=messages[:1], tools=TOOLS, tool_choice="none", max_tokens=4, **GREEDY)
    assert with_result > data["usage"]["prompt_tokens"] + 20


def test_legacy_functions_api(client):
    data = chat(
        client,
        messages=[{"role": "user", "content": "Jason is 25."}],
        functions=[USER_DETAIL["function"]],
        function_call={"name": "UserDetail"},
        max_tokens=100,
        **GREEDY,
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"]["name"] == "UserDetail"
    validate(json.loads(choice["message"]["function_call"]["arguments"]), SCHEMA_OF["UserDetail"])


# -- streaming -------------------------------------------------------------------------------


# "required" with two tools generates whole calls; a named function has its call's opening
# put in the prompt and only the arguments generated (the prefill path).
@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_streamed_tool_calls_reassemble_into_the_same_calls(client, tool_choice):
    body = {
        "messages": [{"role": "user", "content": "Weather in Paris and Rome, please."}],
        "tools": TOOLS,
        "tool_choice": tool_choice,
        "max_tokens": 300,
        "stream_options": {"include_usage": True},
        **GREEDY,
    }
    whole = chat(client, **body)["choices"][0]
    r = client.post("/v1/chat/completions", json={**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    chunks = sse_chunks(r.text)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    calls: dict[int, dict[str, Any]] = {}
    for c in chunks:
        if not c["choices"]:
            assert c["usage"]["completion_tokens"] > 0  # the include_usage chunk
            continue
        for d in c["choices"][0]["delta"].get("tool_calls", []):
            call = calls.setdefault(d["index"], {"id": None, "name": "", "arguments": ""})
            if "id" in d:
                assert call["id"] is None and d["type"] == "function"
                call["id"], call["name"] = d["id"], d["function"]["name"]
            call["arguments"] += d["function"].get("arguments", "")
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls" and all(f is None for f in finishes[:-1])
    streamed = [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
    expected = [(c["function"]["name"], c["function"]["arguments"]) for c in whole["message"]["tool_calls"]]
    assert streamed == expected
    for name, arguments in streamed:
        validate(json.loads(arguments), SCHEMA_OF[name])


def test_streamed_text_answer_with_tools_none(client):
    body = {"messages": [{"role": "user", "content": "Say hello."}], "tools": TOOLS, "tool_choice": "none"}
    r = client.post("/v1/chat/completions", json={**body, "stream": True, "max_tokens": 16, **GREEDY})
    chunks = sse_chunks(r.text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text and not any("tool_calls" in c["choices"][0]["delta"] for c in chunks)


# -- response_format -------------------------------------------------------------------------


def test_json_object_on_chat_and_completions(client):
    data = chat(
        client,
        messages=[{"role": "user", "content": "Describe a cat in JSON."}],
        response_format={"type": "json_object"},
        max_tokens=300,
        **GREEDY,
    )
    assert data["choices"][0]["finish_reason"] == "stop"
    assert isinstance(json.loads(data["choices"][0]["message"]["content"]), dict)
    r = client.post(
        "/v1/completions",
        json={"prompt": "A cat as JSON:", "response_format": {"type": "json_object"}, "max_tokens": 300, **GREEDY},
    )
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["choices"][0]["text"]), dict)


def test_json_schema_on_completions_and_streamed_chat(client):
    schema = SCHEMA_OF["UserDetail"]
    rf = {"type": "json_schema", "json_schema": {"name": "user", "schema": schema, "strict": True}}
    r = client.post("/v1/completions", json={"prompt": "Jason, 25:", "response_format": rf, **GREEDY})
    validate(json.loads(r.json()["choices"][0]["text"]), schema)
    body = {"messages": [{"role": "user", "content": "Jason is 25."}], "response_format": rf, **GREEDY}
    r = client.post("/v1/chat/completions", json={**body, "stream": True})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in sse_chunks(r.text) if c["choices"])
    validate(json.loads(text), schema)
    assert text == chat(client, **body)["choices"][0]["message"]["content"]


@pytest.mark.parametrize("path", SCHEMAS, ids=[p.stem for p in SCHEMAS])
def test_schema_corpus_always_validates(client, path):
    spec = json.loads(path.read_text())
    data = chat(
        client,
        messages=[{"role": "user", "content": spec["prompt"]}],
        response_format={"type": "json_schema", "json_schema": {"name": path.stem, "schema": spec["schema"]}},
        max_tokens=400,
        **GREEDY,
    )
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop", choice  # the grammar bounds every value: it always ends
    validate(json.loads(choice["message"]["content"]), spec["schema"])


def test_sampled_outputs_validate_too(client):
    # Hot sampling makes the model wander: the grammar must still hold it to the schema.
    for name in ("nested_address", "one_of_discriminated", "refs_defs", "format_datetime", "number_exclusive"):
        spec = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
        data = chat(
            client,
            messages=[{"role": "user", "content": spec["prompt"]}],
            response_format={"type": "json_schema", "json_schema": {"name": name, "schema": spec["schema"]}},
            max_tokens=600,
            temperature=1.3,
            seed=11,
        )
        choice = data["choices"][0]
        assert choice["finish_reason"] == "stop", (name, choice)
        validate(json.loads(choice["message"]["content"]), spec["schema"])


def test_cut_by_max_tokens_is_reported_as_length(client):
    rf = {"type": "json_schema", "json_schema": {"name": "u", "schema": SCHEMA_OF["UserDetail"]}}
    data = chat(client, messages=[{"role": "user", "content": "Jason, 25"}], response_format=rf, max_tokens=3)
    assert data["choices"][0]["finish_reason"] == "length"
    body = {"messages": [{"role": "user", "content": "Jason, 25"}], "tools": TOOLS, "tool_choice": "required",
            "max_tokens": 14, **GREEDY}
    choice = chat(client, **body)["choices"][0]
    # The call as far as it was written (its arguments not yet JSON), as the stream gives it.
    assert choice["finish_reason"] == "length" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] in SCHEMA_OF and call["function"]["arguments"].startswith("{")
    with pytest.raises(json.JSONDecodeError):
        json.loads(call["function"]["arguments"])
    chunks = sse_chunks(client.post("/v1/chat/completions", json={**body, "stream": True}).text)
    deltas = [t for c in chunks if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls") or []]
    assert "".join(t["function"]["arguments"] for t in deltas) == call["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_engine_enforces_the_grammar_without_the_http_layer(smollm2):
    # The engine's own loop samples through the ConstrainedSampler, whoever calls it.
    import threading as th

    from nexa.engines.base import TextDelta
    from nexa.engines.llama.engine import LlamaEngine

    eng = LlamaEngine(smollm2.path, name="solo", n_ctx=512)
    try:
        spec = json.loads((SCHEMA_DIR / "refs_defs.json").read_text())
        text, stops, _ = eng.render_chat([{"role": "user", "content": spec["prompt"]}])
        params = SamplingParams(max_tokens=300, temperature=0, grammar=schema_grammar(spec["schema"], "s"), stop=stops)
        out = "".join(
            i.text
            for i in eng.generate(eng.tokenize(text, special=True), params, th.Event())
            if isinstance(i, TextDelta)
        )
        validate(json.loads(out), spec["schema"])
    finally:
        eng.close()


# -- the grammar itself, through llama.cpp's grammar engine --------------------------------


def accepts(engine, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar engine lets `text` through and then lets it end."""
    import llama_cpp

    model = engine._model
    chain = type("Chain", (), {"sampler": llama_cpp.llama_sampler_init_greedy(), "close": lambda self: None})()
    s = ConstrainedSampler(model.vocab, chain, grammar)
    try:
        tokens = [t for ch in text for t in model.tokenize(ch.encode(), add_bos=False, special=False)]
        one = llama_cpp.llama_token_data(0, 1.0, 0.0)
        arr = llama_cpp.llama_token_data_array(data=ctypes.pointer(one), size=1, selected=-1, sorted=False)
        for token in [*tokens, model.token_eos()]:
            one.id, one.logit = token, 1.0
            arr.size = 1
            llama_cpp.llama_sampler_apply(s._grammar, ctypes.byref(arr))
            if one.logit == float("-inf"):
                return False
            if token != model.token_eos():
                llama_cpp.llama_sampler_accept(s._grammar, token)
        return True
    finally:
        s.close()
        llama_cpp.llama_sampler_free(chain.sampler)


def test_grammar_accepts_exactly_the_valid_strings(engine):
    date = schema_grammar({"type": "string", "format": "date"}, "s")
    assert accepts(engine, date, '"2024-02-28"') and accepts(engine, date, '"1999-12-31"')
    for bad in ('"2024-02-30"', '"2024-04-31"', '"2024-13-01"', '"0000-01-01"', '"2024-1-01"'):
        assert not accepts(engine, date, bad), bad
    rng = schema_grammar({"type": "integer", "minimum": -5, "maximum": 130}, "s")
    assert all(accepts(engine, rng, str(v)) for v in (-5, 0, 7, 99, 130))
    assert not any(accepts(engine, rng, s) for s in ("-6", "131", "007", "-0", "1e2"))
    string = schema_grammar({"type": "string", "maxLength": 3}, "s")
    assert accepts(engine, string, '"a\\nb"') and accepts(engine, string, '"\\"x"')
    assert not accepts(engine, string, '"a\nb"')  # a raw newline is not JSON
    assert not accepts(engine, string, '"abcd"')
    pattern = schema_grammar({"type": "string", "pattern": "^[A-Z]{2}-\\d{2,3}$"}, "s")
    assert accepts(engine, pattern, '"AB-12"') and accepts(engine, pattern, '"XY-999"')
    assert not accepts(engine, pattern, '"AB-1"') and not accepts(engine, pattern, '"ab-12"')
    obj = schema_grammar(SCHEMA_OF["get_weather"], "s")
    assert accepts(engine, obj, '{"city": "Oslo", "unit": "celsius"}')
    assert not accepts(engine, obj, '{"city": "Oslo", "unit": "kelvin"}')
    assert not accepts(engine, obj, '{"city": "Oslo", "unit": "celsius", "x": 1}')
    assert not accepts(engine, obj, '{"city": "Oslo"}')


# -- the official openai client ------------------------------------------------------------


def test_openai_client_parses_tools_and_response_formats(live):
    import openai
    from pydantic import BaseModel

    class UserDetail(BaseModel):
        name: str
        age: int

    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", timeout=300, max_retries=0)
    r = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "Extract Jason is 25 years old"}],
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "UserDetail"}},
        temperature=0,
    )
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "UserDetail"
    UserDetail.model_validate_json(call.function.arguments)

    parsed = client.chat.completions.parse(
        model="any",
        messages=[{"role": "user", "content": "Jason is 25 years old."}],
        response_format=UserDetail,
        temperature=0,
    )
    assert isinstance(parsed.choices[0].message.parsed, UserDetail)

    parsed = client.chat.completions.parse(
        model="any",
        messages=[{"role": "user", "content": "Extract Jason is 25 years old"}],
        tools=[openai.pydantic_function_tool(UserDetail)],
        tool_choice="required",
        temperature=0,
    )
    assert isinstance(parsed.choices[0].message.tool_calls[0].function.parsed_arguments, UserDetail)

    stream = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        stream=True,
    )
    name, arguments = "", ""
    for chunk in stream:
        for d in chunk.choices[0].delta.tool_calls or []:
            name += d.function.name or ""
            arguments += d.function.arguments or ""
    validate(json.loads(arguments), SCHEMA_OF[name])

    # The original Nexa server's endpoint answers a chat.completion the client's own type accepts.
    raw = httpx.post(
        live.url + "/v1/function-calling",
        json={"messages": [{"role": "user", "content": "Jason is 25"}], "tools": [USER_DETAIL]},
        timeout=300,
    ).json()
    completion = openai.types.chat.ChatCompletion.model_validate(raw)
    assert completion.choices[0].message.function_call.name == "UserDetail"


# -- bad input -------------------------------------------------------------------------------

BAD_SCHEMAS = [
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "'not'"),
    ({"type": "strin"}, "unknown type"),
    ({"$ref": "#/$defs/Missing"}, "points at nothing"),
    ({"type": "string", "format": "uri"}, "format 'uri'"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "no integer"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
    ({"type": "string", "pattern": "(a)\\1"}, "cannot be enforced"),
    ({"type": "string", "pattern": "[a-"}, "not a valid regular expression"),
    ({"type": "number", "multipleOf": 0.5}, "multipleOf"),
    ({"allOf": [{"type": "object"}, {"type": "object"}]}, "allOf"),
    ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "patternProperties"),
    ({"type": "string", "minLength": 5, "maxLength": 2}, "maxLength"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": "a"}, "required"),
    ({"type": "string", "pattern": "^a+$", "maxLength": 0}, "maxLength"),
    ({"type": "object", "properties": {"x": {"type": "integer"}}, "if": {}}, "'if'"),
]


@pytest.mark.parametrize(("schema", "says"), BAD_SCHEMAS, ids=[s for _, s in BAD_SCHEMAS])
def test_unenforceable_or_invalid_schemas_are_400(client, schema, says):
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "response_format": rf}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "response_format.json_schema.schema" and says in err["message"], err
    tool = {
        "type": "function",
        "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": schema}}},
    }
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "tools": [tool]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools[0].function.parameters", r.text


def test_remote_refs_are_never_fetched(client):
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/schema.json"
        rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": url}}}
        r = client.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "response_format": rf}
        )
        assert r.status_code == 400 and "not local" in r.json()["error"]["message"]
        assert hits == []
    finally:
        server.shutdown()


MSG = [{"role": "user", "content": "hi"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "UserDetail", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": ["x"]}, "tools[0]"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [{"type": "function"}]}, "tools[0].function"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tools": [USER_DETAIL, USER_DETAIL]}, "tools[1].function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
            "tools[0].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "description": 3}}]},
            "tools[0].function.description",
        ),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "functions": [USER_DETAIL["function"]]}, "functions"),
        ({"functions": [{"name": "f"}], "function_call": {"name": "g"}}, "function_call"),
        ({"tools": TOOLS, "stop": ["}"]}, "stop"),
        ({"response_format": {"type": "json_object"}, "stop": "x"}, "stop"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"messages": [*MSG, {"role": "tool", "tool_call_id": "call_9", "content": "1"}]},
            "messages[1].tool_call_id",
        ),
        ({"messages": [*MSG, {"role": "tool", "content": "1"}]}, "messages[1].tool_call_id"),
        ({"messages": [*MSG, {"role": "assistant", "tool_calls": [{"id": "x"}]}]}, "messages[1].tool_calls[0]"),
        (
            {
                "messages": [
                    *MSG,
                    {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{"}}]},
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"messages": [*MSG, {"role": "function", "content": "1"}]}, "messages[1].name"),
    ],
)
def test_bad_tool_input_is_400_naming_the_field(client, body, param):
    r = client.post("/v1/chat/completions", json={"messages": MSG, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_completions_response_format_errors(client):
    r = client.post(
        "/v1/completions",
        json={
            "prompt": "x",
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}},
        },
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format.json_schema.schema"


