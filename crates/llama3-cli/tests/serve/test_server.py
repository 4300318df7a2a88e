"""`llama3 serve` against the official `openai` Python client and raw HTTP.

Run by crates/llama3-cli/tests/serve.rs (cargo test), which passes the binary in LLAMA3_BIN;
scripts/test.sh installs the `openai` package. The default model answers; every greedy answer
is compared with `llama3 generate` on the same prompt.

    LLAMA3_BIN=target/release/llama3 python3 crates/llama3-cli/tests/serve/test_server.py
"""

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
import unittest

import openai

BIN = os.environ.get("LLAMA3_BIN", "target/release/llama3")
KEY = "test-key-123"


class Server:
    """A `llama3 serve` process on a free port."""

    def __init__(self, *args):
        self.key = args[args.index("--api-key") + 1] if "--api-key" in args else None
        self.proc = subprocess.Popen(
            [BIN, "serve", "--port", "0", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.port = None
        self.log = []
        while self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("server exited: " + "".join(self.log))
            self.log.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
        # Keep draining stderr so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.time() + 120
        while self.request("GET", "/health")[0] != 200:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("server not ready: " + "".join(self.log))
            time.sleep(0.1)

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def request(self, method, path, body=None, headers=None, raw=False):
        """(status, headers, parsed JSON or text) of one request on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        try:
            conn.request(method, path, body=body, headers=headers or {})
        except (ConnectionRefusedError, ConnectionResetError):
            return 0, {}, None
        r = conn.getresponse()
        data = r.read()
        conn.close()
        if raw:
            return r.status, dict(r.getheaders()), data
        try:
            return r.status, dict(r.getheaders()), json.loads(data)
        except ValueError:
            return r.status, dict(r.getheaders()), data.decode("utf-8", "replace")

    def metric(self, name):
        headers = {"Authorization": "Bearer " + self.key} if self.key else {}
        _, _, text = self.request("GET", "/metrics", headers=headers)
        m = re.search(r"^" + re.escape(name) + r"(?:\{[^}]*\})? (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def stop(self):
        self.proc.terminate()
        self.proc.stderr.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def auth():
    return {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"}


def generate_messages(messages, n):
    """`llama3 generate` alone, greedy, on a conversation in SmolLM2's ChatML template (the
    caller checks the prompt length against the server's, so a rendering that differs fails)."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    args = [BIN, "generate", "-p", text + "<|im_start|>assistant\n", "--greedy", "-n", str(n),
            "--json"]
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def generate(prompt, n, chat):
    """`llama3 generate` greedy output for the same prompt: the reference."""
    args = [BIN, "generate", "-p", prompt, "--greedy", "-n", str(n), "--json"]
    if chat:
        args.append("--chat")
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Translate 'good morning' to Spanish.",
    "What is 12 times 12?",
    "Give me a synonym for happy.",
    "Who wrote Romeo and Juliet?",
    "What is the boiling point of water?",
    "Tell me a fun fact about octopuses.",
    "What color is the sky on a clear day?",
    "Explain photosynthesis in one sentence.",
    "What is the largest planet?",
    "Suggest a name for a cat.",
    "What do bees make?",
    "List two programming languages.",
]


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = Server(
            "--api-key", KEY, "--parallel", "16", "--ctx", "512", "--max-tokens", "400",
            "--body-limit", "65536",
        )
        cls.client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{cls.srv.port}/v1", api_key=KEY, max_retries=0
        )
        cls.model = cls.client.models.list().data[0].id

    @classmethod
    def tearDownClass(cls):
        cls.srv.stop()

    # -- acceptance 1: the openai client --------------------------------------------------

    def test_models_list(self):
        models = self.client.models.list().data
        self.assertEqual(len(models), 1)
        self.assertEqual(models[0].id, "SmolLM2-135M-Instruct.Q4_1")
        self.assertEqual(self.client.models.retrieve(self.model).id, self.model)

    def test_chat_greedy_equals_generate(self):
        for prompt in PROMPTS[:3]:
            ref = generate(prompt, 24, chat=True)
            r = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": prompt}],
                temperature=0,
                max_tokens=24,
            )
            self.assertEqual(r.choices[0].message.content, ref["text"], prompt)
            self.assertEqual(r.usage.prompt_tokens, len(ref["prompt_ids"]))
            self.assertEqual(r.choices[0].finish_reason, ref["finish_reason"])

    def test_lookup_speculation_keeps_greedy_answers(self):
        """Prompt-lookup drafts (the request's `lookup`) ride in the batched forward: the same
        greedy answer as plain decoding, and the drafts are counted in /metrics."""
        text = ("The committee met on Tuesday to review the budget. After a long discussion, the "
                "members agreed to fund the new library and repair the bridge on Main Street.")
        prompt = "Repeat this paragraph word for word:\n\n" + text
        ref = generate(prompt, 60, chat=True)
        before = self.srv.metric("llama3_draft_tokens_accepted_total") or 0
        r = self.client.chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": prompt}], temperature=0,
            max_tokens=60, extra_body={"lookup": 8})
        self.assertEqual(r.choices[0].message.content, ref["text"])
        self.assertGreater(self.srv.metric("llama3_draft_tokens_accepted_total"), before)

    def test_chat_stream_equals_whole(self):
        msgs = [{"role": "user", "content": PROMPTS[3]}]
        whole = self.client.chat.completions.create(
            model=self.model, messages=msgs, temperature=0, max_tokens=20
        )
        chunks = list(
            self.client.chat.completions.create(
                model=self.model, messages=msgs, temperature=0, max_tokens=20, stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, whole.choices[0].message.content)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices]
        self.assertEqual(finish[-1], whole.choices[0].finish_reason)
        self.assertEqual(chunks[-1].usage.completion_tokens, whole.usage.completion_tokens)
        self.assertGreater(len(chunks), 3)

    def test_completion_text_and_token_ids(self):
        prompt = "The three laws of thermodynamics are"
        ref = generate(prompt, 16, chat=False)
        r = self.client.completions.create(
            model=self.model, prompt=prompt, temperature=0, max_tokens=16
        )
        self.assertEqual(r.choices[0].text, ref["text"])
        self.assertEqual(r.usage.prompt_tokens, len(ref["prompt_ids"]))
        # The same prompt as token ids gives the same text.
        r2 = self.client.completions.create(
            model=self.model, prompt=ref["prompt_ids"], temperature=0, max_tokens=16
        )
        self.assertEqual(r2.choices[0].text, ref["text"])
        # Streaming.
        parts = list(
            self.client.completions.create(
                model=self.model, prompt=prompt, temperature=0, max_tokens=16, stream=True
            )
        )
        self.assertEqual("".join(p.choices[0].text for p in parts), ref["text"])
        self.assertEqual(parts[-1].choices[0].finish_reason, r.choices[0].finish_reason)

    def test_stop(self):
        prompt = "Count: 1, 2, 3, 4, 5,"
        full = self.client.completions.create(
            model=self.model, prompt=prompt, temperature=0, max_tokens=20
        ).choices[0]
        self.assertIn(" 7", full.text)
        r = self.client.completions.create(
            model=self.model, prompt=prompt, temperature=0, max_tokens=20, stop=[" 7"]
        ).choices[0]
        self.assertEqual(r.finish_reason, "stop")
        self.assertEqual(r.text, full.text[: full.text.index(" 7")])
        streamed = "".join(
            c.choices[0].text
            for c in self.client.completions.create(
                model=self.model, prompt=prompt, temperature=0, max_tokens=20, stop=" 7",
                stream=True,
            )
        )
        self.assertEqual(streamed, r.text)

    def test_seed_reproducible(self):
        def ask(seed):
            return self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": "Tell me a story about a dragon."}],
                temperature=1.0,
                max_tokens=24,
                seed=seed,
            ).choices[0].message.content

        a, b = ask(1234), ask(1234)
        self.assertEqual(a, b)
        others = {ask(s) for s in (1, 2, 3)}
        self.assertGreater(len(others | {a}), 1, "different seeds should differ")

    def test_n_choices(self):
        r = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": "Say something."}],
            temperature=1.0, max_tokens=8, n=3, seed=7,
        )
        self.assertEqual([c.index for c in r.choices], [0, 1, 2])

    def test_logprobs(self):
        ref = generate(PROMPTS[6], 8, chat=True)
        r = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "user", "content": PROMPTS[6]}],
            temperature=0, max_tokens=8, logprobs=True, top_logprobs=3,
        )
        content = r.choices[0].logprobs.content
        steps = [s for s in ref["steps"]][: len(content)]
        self.assertEqual(len(content), len(steps))
        for c, s in zip(content, steps):
            self.assertAlmostEqual(c.logprob, s["logprob"], places=4)
            self.assertEqual(len(c.top_logprobs), 3)
            # Greedy: the chosen token is the most likely one.
            self.assertAlmostEqual(c.top_logprobs[0].logprob, c.logprob, places=5)
            self.assertLessEqual(c.logprob, 0.0)
        t = self.client.completions.create(
            model=self.model, prompt="Hello", temperature=0, max_tokens=4, logprobs=2
        ).choices[0].logprobs
        self.assertEqual(len(t.tokens), 4)
        self.assertEqual(len(t.top_logprobs[0]), 2)
        self.assertEqual("".join(t.tokens), self.client.completions.create(
            model=self.model, prompt="Hello", temperature=0, max_tokens=4).choices[0].text)

    def test_tokenize_detokenize(self):
        s, _, body = self.srv.request("POST", "/tokenize", {"content": "Hello world"}, auth())
        self.assertEqual(s, 200)
        ids = body["tokens"]
        self.assertTrue(ids)
        s, _, body = self.srv.request("POST", "/detokenize", {"tokens": ids}, auth())
        self.assertEqual((s, body["content"]), (200, "Hello world"))

    # -- acceptance 2: concurrency ---------------------------------------------------------

    def test_prefix_reuse_keeps_answers_and_reports_cached_tokens(self):
        # A conversation's second turn shares its first turn's prompt and answer: the slot
        # that served it keeps them, and the answer equals `llama3 generate` run alone.
        system = {"role": "system", "content": "You are a helpful assistant who answers briefly."}
        turn1 = [system, {"role": "user", "content": PROMPTS[4]}]
        r1 = self.client.chat.completions.create(
            model=self.model, messages=turn1, temperature=0, max_tokens=16)
        turn2 = turn1 + [{"role": "assistant", "content": r1.choices[0].message.content},
                         {"role": "user", "content": PROMPTS[5]}]
        r2 = self.client.chat.completions.create(
            model=self.model, messages=turn2, temperature=0, max_tokens=16)
        self.assertGreater(r2.usage.prompt_tokens_details.cached_tokens, 10)
        s, _, text = self.srv.request("GET", "/metrics", headers=auth())
        self.assertGreater(float(re.search(r"^llama3_prefix_hits_total (\S+)", text, re.M).group(1)), 0)
        self.assertGreater(
            float(re.search(r"^llama3_prompt_tokens_cached_total (\S+)", text, re.M).group(1)), 10)
        self.assertLess(r2.usage.prompt_tokens_details.cached_tokens, r2.usage.prompt_tokens)
        ref = generate_messages(turn2, 16)
        self.assertEqual(r2.usage.prompt_tokens, len(ref["prompt_ids"]))
        self.assertEqual(r2.choices[0].message.content, ref["text"])
        # cache_prompt false (llama.cpp's field): the whole prompt runs again, same answer.
        r3 = self.client.chat.completions.create(
            model=self.model, messages=turn2, temperature=0, max_tokens=16,
            extra_body={"cache_prompt": False})
        self.assertEqual(r3.usage.prompt_tokens_details.cached_tokens, 0)
        self.assertEqual(r3.choices[0].message.content, ref["text"])

    def test_concurrent_equals_sequential(self):
        def ask(i):
            return self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": PROMPTS[i]}],
                temperature=0,
                max_tokens=12 + 2 * i,
            ).choices[0].message.content

        sequential = [ask(i) for i in range(16)]
        results = [None] * 16
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, ask(i))) for i in range(16)
        ]
        batches_before = self.srv.metric("llama3_batch_size_count")
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, sequential)
        # They really ran together: the mean decode batch was well above one.
        s, _, text = self.srv.request("GET", "/metrics", headers=auth())
        total = float(re.search(r"^llama3_batch_size_sum (\S+)", text, re.M).group(1))
        count = float(re.search(r"^llama3_batch_size_count (\S+)", text, re.M).group(1))
        self.assertGreater(count, batches_before)
        self.assertGreater(total / count, 1.5)

    def test_cancel_frees_slot(self):
        cancelled = self.srv.metric("llama3_cancelled_total") or 0
        conn = http.client.HTTPConnection("127.0.0.1", self.srv.port, timeout=60)
        body = json.dumps({
            "messages": [{"role": "user", "content": "Write a very long essay about rivers."}],
            "max_tokens": 400, "stream": True, "temperature": 0.7,
        })
        conn.request("POST", "/v1/chat/completions", body=body, headers=auth())
        r = conn.getresponse()
        self.assertEqual(r.status, 200)
        r.fp.readline()
        r.fp.readline()
        r.fp.readline()
        # The role chunk comes from the HTTP side at once; the engine takes the request a
        # moment later (under load, more than a moment).
        deadline = time.time() + 30
        while (self.srv.metric("llama3_slots_busy") or 0) < 1 and time.time() < deadline:
            time.sleep(0.05)
        self.assertGreaterEqual(self.srv.metric("llama3_slots_busy"), 1)
        # The response holds its own reference to the socket: close both to hang up.
        r.close()
        conn.close()
        deadline = time.time() + 30
        while time.time() < deadline:
            if (self.srv.metric("llama3_cancelled_total") or 0) > cancelled and \
                    self.srv.metric("llama3_slots_busy") == 0:
                break
            time.sleep(0.1)
        self.assertGreater(self.srv.metric("llama3_cancelled_total"), cancelled)
        self.assertEqual(self.srv.metric("llama3_slots_busy"), 0)

    # -- acceptance 3: robustness ----------------------------------------------------------

    def check_error(self, status, body, want):
        self.assertEqual(status, want, body)
        self.assertIsInstance(body, dict, body)
        err = body["error"]
        self.assertIsInstance(err["message"], str)
        self.assertTrue(err["message"])
        self.assertIn("type", err)

    def test_bad_requests(self):
        chat = "/v1/chat/completions"
        msgs = [{"role": "user", "content": "hi"}]
        cases = [
            (chat, b'{"messages": [', 400),  # malformed JSON
            (chat, b"", 400),  # empty body
            (chat, {"messages": "hi"}, 400),  # wrong type
            (chat, {"messages": msgs, "temperature": "hot"}, 400),
            (chat, {"messages": msgs, "max_tokens": -5}, 400),
            (chat, {"messages": msgs, "max_tokens": 0}, 400),
            (chat, {"messages": msgs, "max_tokens": 10**12}, 400),
            (chat, {"messages": msgs, "max_tokens": 1e30}, 400),
            (chat, {"messages": msgs, "max_tokens": 300, "model": "gpt-4o"}, 404),
            (chat, {"messages": [{"role": "wizard", "content": "x"}]}, 400),
            (chat, {"messages": []}, 400),
            (chat, {"messages": msgs, "n": 0}, 400),
            (chat, {"messages": msgs, "top_p": 7}, 400),
            (chat, {"messages": msgs, "top_logprobs": 50, "logprobs": True}, 400),
            (chat, {"messages": msgs, "logit_bias": {"abc": 1}}, 400),
            (chat, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400),  # bad UTF-8
            (chat, {"messages": [{"role": "user", "content": "word " * 600}]}, 400),  # > ctx
            (chat, {"messages": [{"role": "user", "content": "word " * 100}], "max_tokens": 400}, 400),
            ("/v1/completions", {"prompt": [999999999]}, 400),
            ("/v1/completions", {"prompt": []}, 400),
            ("/v1/completions", {"prompt": {"a": 1}}, 400),
            ("/detokenize", {"tokens": [10**9]}, 400),
            ("/v1/nothing", {}, 404),
        ]
        for path, body, want in cases:
            s, _, b = self.srv.request("POST", path, body, auth())
            with self.subTest(body=str(body)[:80]):
                self.check_error(s, b, want)
        # Context errors say so.
        s, _, b = self.srv.request(
            "POST", chat, {"messages": [{"role": "user", "content": "word " * 600}]}, auth())
        self.assertEqual(b["error"]["code"], "context_length_exceeded")
        # Too large a body.
        s, _, b = self.srv.request(
            "POST", chat, {"messages": [{"role": "user", "content": "x" * 100000}]}, auth())
        self.check_error(s, b, 413)
        # Wrong method.
        s, _, b = self.srv.request("GET", chat, headers=auth())
        self.check_error(s, b, 405)
        # Still serving.
        r = self.client.chat.completions.create(
            model=self.model, messages=msgs, temperature=0, max_tokens=4)
        self.assertTrue(r.choices[0].message.content)

    def test_api_key(self):
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            s, _, b = self.srv.request("POST", "/v1/chat/completions", body, headers)
            self.check_error(s, b, 401)
        for path in ("/v1/models", "/metrics", "/tokenize"):
            s, _, b = self.srv.request("GET" if path != "/tokenize" else "POST", path, {}, {})
            self.assertEqual(s, 401, path)
        s, _, b = self.srv.request("GET", "/health")
        self.assertEqual((s, b["status"]), (200, "ok"))
        bad = openai.OpenAI(base_url=self.client.base_url, api_key="nope", max_retries=0)
        with self.assertRaises(openai.AuthenticationError):
            bad.models.list()


class QueueTest(unittest.TestCase):
    """A full queue answers 429 with Retry-After; the server keeps serving."""

    def test_queue_full(self):
        srv = Server("--parallel", "1", "--queue", "1")
        try:
            body = {"prompt": "Once upon a time", "max_tokens": 60, "temperature": 0}
            statuses, headers = [], []

            def go():
                s, h, _ = srv.request("POST", "/v1/completions", body)
                statuses.append(s)
                headers.append(h)

            threads = [threading.Thread(target=go) for _ in range(5)]
            for t in threads:
                t.start()
                time.sleep(0.05)
            for t in threads:
                t.join()
            self.assertIn(429, statuses)
            self.assertIn(200, statuses)
            h = headers[statuses.index(429)]
            self.assertIn("retry-after", {k.lower() for k in h})
            s, _, b = srv.request("POST", "/v1/completions", {**body, "max_tokens": 2})
            self.assertEqual(s, 200, b)
        finally:
            srv.stop()

    def test_sigterm_finishes_running_request(self):
        srv = Server("--parallel", "2")
        result = {}

        def go():
            result["r"] = srv.request(
                "POST", "/v1/completions", {"prompt": "Hello", "max_tokens": 40, "temperature": 0})

        t = threading.Thread(target=go)
        t.start()
        time.sleep(0.5)
        srv.proc.terminate()
        t.join()
        self.assertEqual(result["r"][0], 200)
        self.assertEqual(srv.proc.wait(timeout=30), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
