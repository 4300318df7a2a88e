"""`/v1/embeddings` on `llama3 serve` with the official `openai` client: one and many inputs,
unit norm, a batch equal to one input at a time, base64, `dimensions`, token-id inputs, the
same vectors as `llama3 embed`, and 400s for bad requests.

Run by crates/llama3-cli/tests/serve.rs (cargo test).

    LLAMA3_BIN=target/release/llama3 python3 crates/llama3-cli/tests/serve/test_embeddings.py
"""

import base64
import json
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import openai

sys.path.insert(0, os.path.dirname(__file__))
from test_server import BIN, Server  # noqa: E402

TEXTS = [
    "The cat sat on the mat.",
    "Stocks fell sharply on Monday after the central bank raised rates.",
    "Photosynthesis turns light into chemical energy.",
    "Un chat est assis sur le tapis.",
]


class EmbeddingsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server("--parallel", "2", "--alias", "m")
        cls.client = openai.OpenAI(base_url=f"http://127.0.0.1:{cls.srv.port}/v1", api_key="none",
                                   max_retries=0, timeout=600)

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    def vectors(self, inputs, **kw):
        r = self.client.embeddings.create(model="m", input=inputs, **kw)
        self.assertEqual([d.index for d in r.data], list(range(len(r.data))))
        return np.array([d.embedding for d in r.data], dtype=np.float32), r

    def test_one_and_many_inputs_unit_norm_batch_equals_singles(self):
        one, r = self.vectors(TEXTS[0])
        self.assertEqual(one.shape, (1, 576))
        self.assertGreater(r.usage.prompt_tokens, 3)
        many, _ = self.vectors(TEXTS)
        self.assertEqual(many.shape, (len(TEXTS), 576))
        np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
        singles = np.concatenate([self.vectors(t)[0] for t in TEXTS])
        self.assertLess(np.abs(many - singles).max(), 1e-5)
        # Different texts, different vectors; a paraphrase is nearer than an unrelated text.
        sims = many @ many.T
        self.assertGreater(sims[0, 3], sims[0, 1])

    def test_cli_gives_the_server_vectors(self):
        many, _ = self.vectors(TEXTS)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "texts.txt")
            with open(path, "w") as f:
                f.write("\n".join(TEXTS) + "\n")
            out = os.path.join(d, "v.npy")
            subprocess.run([BIN, "embed", "-f", path, "-o", out], check=True, capture_output=True)
            cli = np.load(out)
        self.assertEqual(cli.shape, many.shape)
        self.assertLess(np.abs(cli - many).max(), 1e-6)
        last, _ = self.vectors(TEXTS[:1], extra_body={"pooling": "last"})
        jl = subprocess.run([BIN, "embed", "-p", TEXTS[0], "--pooling", "last"], check=True,
                            capture_output=True, text=True).stdout
        cli_last = np.array(json.loads(jl.splitlines()[0])["embedding"], dtype=np.float32)
        self.assertLess(np.abs(cli_last - last[0]).max(), 1e-6)
        self.assertGreater(np.abs(last[0] - many[0]).max(), 1e-3, "last pooling differs from mean")

    def test_base64_dimensions_and_token_ids(self):
        floats, _ = self.vectors(TEXTS[:2])
        r = self.client.embeddings.with_raw_response.create(model="m", input=TEXTS[:2], encoding_format="base64")
        data = json.loads(r.text)["data"]
        decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
        np.testing.assert_array_equal(decoded, floats)
        short, _ = self.vectors(TEXTS[:2], dimensions=64)
        self.assertEqual(short.shape, (2, 64))
        np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
        full = floats[:, :64] / np.linalg.norm(floats[:, :64], axis=1, keepdims=True)
        self.assertLess(np.abs(short - full).max(), 1e-5)
        _, _, toks = self.srv.request("POST", "/tokenize", {"content": TEXTS[0], "add_special": True})
        by_ids, _ = self.vectors([toks["tokens"]])
        self.assertLess(np.abs(by_ids[0] - floats[0]).max(), 1e-6)

    def test_bad_requests_are_400(self):
        cases = [
            ({"input": []}, "input"),
            ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
            ({"input": "x", "dimensions": 100000}, "dimensions"),
            ({"input": [[10 ** 9]]}, "vocabulary"),
            ({"input": [[1] * 9000]}, "context"),
            ({"input": "x", "pooling": "max"}, "pooling"),
        ]
        for body, needle in cases:
            status, _, r = self.srv.request("POST", "/v1/embeddings", {"model": "m", **body})
            self.assertEqual(status, 400, body)
            self.assertIn(needle, r["error"]["message"], body)


if __name__ == "__main__":
    unittest.main(verbosity=2)
