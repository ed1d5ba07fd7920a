"""Function calling and structured output without a model: templates that render tools
themselves, the schema corpus the live tests send, and the grammar a response_format asks for."""

from __future__ import annotations

from jsonschema import Draft202012Validator

from support.tools import SCHEMA_OF, SCHEMAS, TOOLS

# A Hermes/Qwen-style template that renders tools itself.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTOOLS:{% for t in tools %} {{ t.function.name }}{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function.arguments | tojson }}</tool_call>"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
)


class TemplateEngine:
    """Renders with a real llama-cpp-python Jinja formatter, as LlamaEngine does."""

    def __init__(self, template: str):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.formatter = Jinja2ChatFormatter(template=template, eos_token="<|im_end|>", bos_token="")

    def render_chat(self, messages, tools=None):
        r = self.formatter(messages=messages, tools=tools) if tools else self.formatter(messages=messages)
        return r.prompt, [r.stop] if isinstance(r.stop, str) else list(r.stop or []), True


def test_templates_that_know_tools_present_them_their_own_way():
    from nexa.schemas.text import ChatRequest
    from nexa.structured.plan import plan_chat
    from nexa.structured.prompting import render

    body = ChatRequest(messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=TOOLS)
    plan = plan_chat(body)
    assert plan is not None
    prompt, _, _ = render(TemplateEngine(TOOL_TEMPLATE), body.messages, plan)
    assert "TOOLS: UserDetail get_weather" in prompt and "<tools>" not in prompt
    # Where rendering with tools changes nothing, the generic note is used instead.
    plain = TemplateEngine("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    prompt, _, _ = render(plain, body.messages, plan)
    assert "<tools>" in prompt and '"name": "get_weather"' in prompt
    # History in a tool-aware template keeps the template's own shape (arguments as an object).
    history = ChatRequest(
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "cold"},
        ],
        tools=TOOLS,
    )
    plan = plan_chat(history)
    assert plan is not None
    prompt, _, _ = render(TemplateEngine(TOOL_TEMPLATE), history.messages, plan)
    assert '<tool_call>{"city": "Oslo"}</tool_call>' in prompt and "<|im_start|>tool\ncold" in prompt


def test_corpus_covers_the_schema_features():
    text = " ".join(p.read_text() for p in SCHEMAS)
    assert len(SCHEMAS) >= 30
    for feature in (
        '"minItems"', '"maxItems"', '"enum"', '"const"', '"pattern"', '"date"', '"time"', '"uuid"', '"minimum"',
        '"maximum"', '"boolean"', '"null"', '"anyOf"', '"oneOf"', '"$ref"', '"$defs"', '"required"',
        '"additionalProperties"',
    ):  # fmt: skip
        assert feature in text, feature
    # The formats are really checked (time and date-time need rfc3339-validator installed).
    checker = Draft202012Validator.FORMAT_CHECKER
    for value, fmt in (("25:00:00Z", "time"), ("2024-02-30", "date"), ("2024-01-01T10:00:00", "date-time")):
        assert not checker.conforms(value, fmt), fmt
    assert checker.conforms("10:00:00+02:00", "time")
    assert checker.conforms("6ba7b810-9dad-11d1-80b4-00c04fd430c8", "uuid")


def test_json_object_with_a_schema_and_bare_json_schema():
    # llama.cpp's extension ({"type": "json_object", "schema": ...}) and a json_schema sent
    # without the {"name", "schema"} wrapper both constrain to the schema.
    from nexa.schemas.text import ResponseFormat
    from nexa.structured.grammars import response_format_grammar

    schema = SCHEMA_OF["get_weather"]
    for fmt in ({"type": "json_object", "schema": schema}, {"type": "json_schema", "json_schema": schema}):
        grammar = response_format_grammar(ResponseFormat.model_validate(fmt))
        assert grammar is not None and '"\\"unit\\""' in grammar and '"\\"fahrenheit\\""' in grammar
    assert response_format_grammar(ResponseFormat(type="text")) is None
