"""Tool calling on `llama3 serve` with the official `openai` client: the default model (its
template knows no tools: the generic JSON format) and the same model under the Llama 3.2 chat
template (Llama 3 JSON calls). Arguments are validated against each tool's schema with the
`jsonschema` package; streamed deltas must assemble to the whole answer's calls.

Run by crates/llama3-cli/tests/serve.rs (cargo test).

    LLAMA3_BIN=target/release/llama3 python3 crates/llama3-cli/tests/serve/test_tools.py
"""

import json
import os
import sys
import unittest

import jsonschema
import openai

sys.path.insert(0, os.path.dirname(__file__))
from test_server import Server  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LLAMA32_TEMPLATE = os.path.join(HERE, "..", "..", "..", "llama3", "tests", "data", "llama3.2_chat_template.jinja")

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    }},
    {"type": "function", "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 40},
                           "hour24": {"type": "boolean"}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    }},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris right now?"}]


class ToolsBase:
    """The checks, run against one server (a subclass starts it)."""

    args = ()

    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--parallel", "4", "--ctx", "2048", "--max-tokens", "300", "--alias", "m", *cls.args)
        cls.client = openai.OpenAI(base_url=f"http://127.0.0.1:{cls.srv.port}/v1", api_key="none",
                                   max_retries=0, timeout=600)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def chat(self, messages=ASK, **kw):
        kw.setdefault("max_tokens", 200)
        return self.client.chat.completions.create(model="m", messages=messages, tools=TOOLS, **kw)

    def check_calls(self, choice, names=None):
        self.assertEqual(choice.finish_reason, "tool_calls", choice.message)
        calls = choice.message.tool_calls
        self.assertTrue(calls, choice.message)
        for c in calls:
            self.assertEqual(c.type, "function")
            self.assertTrue(c.id.startswith("call_"))
            self.assertIn(c.function.name, names or SCHEMAS)
            jsonschema.validate(json.loads(c.function.arguments), SCHEMAS[c.function.name])
        return calls

    def test_required_gives_valid_calls(self):
        for seed in (1, 2, 3):
            r = self.chat(tool_choice="required", temperature=1.0, seed=seed)
            self.check_calls(r.choices[0])

    def test_a_named_tool_is_called(self):
        r = self.chat(tool_choice={"type": "function", "function": {"name": "get_time"}}, temperature=1.0, seed=4)
        calls = self.check_calls(r.choices[0], names=["get_time"])
        self.assertEqual(len(calls), 1)

    def test_streamed_deltas_assemble_to_the_same_call(self):
        whole = self.chat(tool_choice="required", temperature=0).choices[0].message.tool_calls
        calls, finish = {}, None
        for chunk in self.chat(tool_choice="required", temperature=0, stream=True):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                for d in c.delta.tool_calls or []:
                    call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                    if d.id:
                        self.assertIsNone(call["id"], "id sent once")
                        call["id"] = d.id
                    if d.function and d.function.name:
                        self.assertIsNone(call["name"], "name sent once")
                        call["name"] = d.function.name
                    if d.function and d.function.arguments:
                        call["arguments"] += d.function.arguments
        self.assertEqual(finish, "tool_calls")
        got = [(calls[k]["name"], json.loads(calls[k]["arguments"])) for k in sorted(calls)]
        want = [(c.function.name, json.loads(c.function.arguments)) for c in whole]
        self.assertEqual(got, want)
        self.assertTrue(all(c["id"] and c["id"].startswith("call_") for c in calls.values()))

    def test_a_tool_message_continues_the_chat(self):
        first = self.chat(tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0)
        call = first.choices[0].message.tool_calls[0]
        history = ASK + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "clear"})},
        ]
        r = self.chat(history, tool_choice="none", temperature=0, max_tokens=60)
        c = r.choices[0]
        self.assertIsNone(c.message.tool_calls)
        self.assertTrue(c.message.content)
        self.assertIn(c.finish_reason, ("stop", "length"))
        # The result reached the prompt: the conversation is longer than the question alone.
        alone = self.chat(tool_choice="none", temperature=0, max_tokens=1)
        self.assertGreater(r.usage.prompt_tokens, alone.usage.prompt_tokens + 10)
        # Under auto the answer is read as text or as calls, never left as raw call syntax.
        r = self.chat(history, tool_choice="auto", temperature=0, max_tokens=80)
        c = r.choices[0]
        if c.message.tool_calls:
            self.check_calls(c)
        else:
            self.assertIsInstance(c.message.content, str)

    def test_none_gives_text(self):
        r = self.chat(tool_choice="none", temperature=0, max_tokens=40)
        c = r.choices[0]
        self.assertIsNone(c.message.tool_calls)
        self.assertIsInstance(c.message.content, str)
        self.assertTrue(c.message.content)
        self.assertIn(c.finish_reason, ("stop", "length"))

    def test_bad_tool_requests_are_400(self):
        cases = [
            ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
            ({"tool_choice": "sometimes"}, "tool_choice"),
            ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool"),
        ]
        for kw, needle in cases:
            with self.assertRaises(openai.BadRequestError, msg=str(kw)) as cm:
                self.chat(**kw)
            self.assertIn(needle, str(cm.exception))
        with self.assertRaises(openai.BadRequestError):
            self.client.chat.completions.create(model="m", messages=ASK, max_tokens=5, tools=[
                {"type": "retrieval", "function": {"name": "x"}}])
        with self.assertRaises(openai.BadRequestError) as cm:
            self.chat(ASK + [{"role": "tool", "content": "18C"}], max_tokens=5)
        self.assertIn("tool_call_id", str(cm.exception))


class GenericFormatTest(ToolsBase, unittest.TestCase):
    """The default model's template has no tools: the generic JSON format."""

    def test_parallel_calls(self):
        r = self.client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Weather in Paris and the time in Tokyo?"}],
            tools=TOOLS, tool_choice="required", parallel_tool_calls=True, temperature=1.0, seed=5, max_tokens=250)
        self.check_calls(r.choices[0])


class Llama32TemplateTest(ToolsBase, unittest.TestCase):
    """The Llama 3.2 chat template: `{"name": ..., "parameters": ...}` calls."""

    args = ("--chat-template-file", LLAMA32_TEMPLATE)

    def test_auto_text_streams_as_it_comes(self):
        """Under auto, an answer that does not begin a call streams token by token and
        assembles to the whole answer."""
        ask = [{"role": "user", "content": "Tell me a short story about a cat."}]
        whole = self.chat(ask, tool_choice="auto", temperature=0, max_tokens=40).choices[0]
        self.assertIsNone(whole.message.tool_calls, "the model answers this in text")
        pieces = []
        for chunk in self.chat(ask, tool_choice="auto", temperature=0, max_tokens=40, stream=True):
            for c in chunk.choices:
                if c.delta.content:
                    pieces.append(c.delta.content)
        self.assertEqual("".join(pieces), whole.message.content)
        self.assertGreater(len(pieces), 5, "streamed in pieces, not at the end")


if __name__ == "__main__":
    unittest.main(verbosity=2)
