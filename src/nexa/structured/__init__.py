"""Structured output: JSON schemas and tool calls held to a grammar. Engine- and HTTP-free.

gbnf.py        GBNF text: literals, exact number ranges, regular expressions
builder.py     GrammarBuilder (collects rules) and the Limits of free-form values
schema.py      JSON schema -> GBNF (schema_rule, schema_grammar); scalars.py and
               disjoint.py hold its string/number rules and its oneOf check
grammars.py    the grammar of a whole answer: response format, tool calls, or either
plan.py        a chat request's tools, tool_choice and tool messages checked into a Plan
prompting.py   the prompt that shows the tools (the template's own form, or a note)
parser.py      the model's constrained output, as it streams, split into text or calls
"""
