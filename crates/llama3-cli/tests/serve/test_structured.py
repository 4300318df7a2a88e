"""Structured output from `llama3 serve` with the official `openai` client: JSON schemas,
`json_object`, regexes and Lark grammars hold on sampled output, validated with the
`jsonschema` package; bad constraints are 400s that say what is wrong.

Run by crates/llama3-cli/tests/serve.rs (cargo test), with the packages scripts/test.sh
installs (openai, jsonschema, numpy).

    LLAMA3_BIN=target/release/llama3 python3 crates/llama3-cli/tests/serve/test_structured.py
"""

import json
import os
import re
import sys
import unittest
from typing import List, Literal

import jsonschema
import openai
import pydantic

sys.path.insert(0, os.path.dirname(__file__))
from test_server import Server  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "role": {"enum": ["engineer", "doctor", "artist", "teacher"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 20},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "skills": {
            "type": "array",
            "items": {"type": "string", "maxLength": 12},
            "minItems": 2,
            "maxItems": 4,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "address", "skills", "active"],
    "additionalProperties": False,
}


class Pet(pydantic.BaseModel):
    kind: Literal["cat", "dog", "fish"]
    name: str = pydantic.Field(max_length=12)
    legs: int = pydantic.Field(ge=0, le=4)


class Owner(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=16)
    pets: List[Pet] = pydantic.Field(min_length=1, max_length=2)


class StructuredTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--parallel", "10", "--ctx", "1024", "--max-tokens", "400", "--alias", "m")
        cls.client = openai.OpenAI(base_url=f"http://127.0.0.1:{cls.srv.port}/v1", api_key="none",
                                   max_retries=0, timeout=600)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def chat(self, content, **kw):
        return self.client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": content}], **kw)

    def test_json_schema_samples_all_validate(self):
        """20 samples at temperature 1.0 (two requests of n=10) parse and validate."""
        rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
        outs = []
        for seed in (1, 2):
            r = self.chat("Describe a fictional person as JSON.", response_format=rf, n=10,
                          temperature=1.0, seed=seed, max_tokens=300)
            outs += r.choices
        self.assertEqual(len(outs), 20)
        for c in outs:
            self.assertEqual(c.finish_reason, "stop", c.message.content)
            doc = json.loads(c.message.content)
            jsonschema.validate(doc, PERSON)

    def test_streamed_constrained_output_assembles_and_validates(self):
        rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
        stream = self.chat("Describe a fictional person as JSON.", response_format=rf, stream=True,
                           temperature=1.0, seed=7, max_tokens=300)
        text, finish = "", None
        for chunk in stream:
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        self.assertEqual(finish, "stop")
        jsonschema.validate(json.loads(text), PERSON)

    def test_parse_with_a_pydantic_model(self):
        parse = getattr(self.client.beta.chat.completions, "parse", None) if hasattr(
            self.client.beta, "chat") else None
        parse = parse or self.client.chat.completions.parse
        r = parse(model="m", messages=[{"role": "user", "content": "Describe a pet owner."}],
                  response_format=Owner, temperature=1.0, seed=3, max_tokens=300)
        owner = r.choices[0].message.parsed
        self.assertIsInstance(owner, Owner)
        self.assertTrue(1 <= len(owner.pets) <= 2)
        for p in owner.pets:
            self.assertIn(p.kind, ("cat", "dog", "fish"))

    def test_json_object_parses(self):
        r = self.chat('Reply with a JSON object with the keys "city" and "country" for Paris.',
                      response_format={"type": "json_object"}, temperature=0, max_tokens=200)
        c = r.choices[0]
        self.assertEqual(c.finish_reason, "stop", c.message.content)
        self.assertIsInstance(json.loads(c.message.content), dict)

    def test_regex_completion_matches(self):
        rx = r" [0-9]{3}-[0-9]{3}-[0-9]{4}"
        r = self.client.completions.create(model="m", prompt="Her phone number is", max_tokens=30,
                                           temperature=1.0, seed=5, n=4, extra_body={"regex": rx})
        for c in r.choices:
            self.assertRegex(c.text, "^" + rx + "$")
            self.assertEqual(c.finish_reason, "stop")

    def test_lark_grammar_and_vllm_field(self):
        g = 'start: "The answer is " ANSWER "."\nANSWER: "yes" | "no"'
        r = self.chat("Is water wet?", temperature=1.0, seed=1, max_tokens=20, extra_body={"grammar": g})
        self.assertIn(r.choices[0].message.content, ("The answer is yes.", "The answer is no."))
        r = self.chat("Pick a color.", temperature=1.0, seed=1, max_tokens=20,
                      extra_body={"guided_regex": "(red|green|blue)"})
        self.assertIn(r.choices[0].message.content, ("red", "green", "blue"))

    def test_max_tokens_mid_schema_is_length(self):
        rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
        r = self.chat("Describe a person.", response_format=rf, max_tokens=5, temperature=0)
        self.assertEqual(r.choices[0].finish_reason, "length")
        self.assertEqual(r.usage.completion_tokens, 5)

    def test_bad_constraints_are_400_with_a_message(self):
        cases = [
            ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strnig"}}}},
             "strnig"),
            ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "schema"),
            ({"response_format": {"type": "xml"}}, "xml"),
            ({"extra_body": {"regex": "(unclosed"}}, "regex"),
            ({"extra_body": {"grammar": "root ::= \"a\""}}, "GBNF"),
            ({"extra_body": {"grammar": "start: missing_rule"}}, "missing_rule"),
            ({"extra_body": {"regex": "a", "grammar": "start: \"a\""}}, "one output constraint"),
        ]
        for kw, needle in cases:
            with self.assertRaises(openai.BadRequestError, msg=str(kw)) as cm:
                self.chat("hi", max_tokens=5, **kw)
            msg = cm.exception.body["message"] if isinstance(cm.exception.body, dict) else str(cm.exception)
            self.assertIn(needle, msg, kw)


if __name__ == "__main__":
    unittest.main(verbosity=2)
