#!/usr/bin/env python3
"""Load benchmark of `llama3 serve` against llama.cpp's server (llama-cpp-python), same run.

For 1, 4, 16 and 64 concurrent clients, each client streams `--requests` completions of
`--max-tokens` tokens (end tokens banned through logit_bias so every answer has the same
length). Reports aggregate generated tokens/s (all tokens over the wall time, prompts and
TTFT included), aggregate decode tokens/s (tokens after each request's first, over the time
in which some request was decoding: see `decode_rate`), time to first token (TTFT) and time
per output token (gaps between streamed tokens), p50 and p99, and ours/llama.cpp ratios.

    python3 scripts/serve_bench.py [--bin target/release/llama3] [--model GGUF]
        [--llamacpp-python VENV/bin/python] [--llama-server BIN] [--threads 2]
        [--max-tokens 64] [--repeat N] [--multi-turn] [--skip-load]

References: llama.cpp's own `llama-server` (--llama-server; `-np N` slots with continuous
batching, built from the llama.cpp that the llama-cpp-python sdist vendors, as
scripts/make_embed_golden.sh builds llama-embedding), and `python -m llama_cpp.server` from
llama-cpp-python[server] (--llamacpp-python; one request at a time, see scripts/bench.sh for its
venv). Without them only ours is measured.

--multi-turn: a 6-turn chat under a ~1,500-token system prompt (the start of the 2021 State of
the Union), greedy answers of 32 tokens appended to the history; time to first token of each
turn with the prompt cache (`cache_prompt: true`, a turn runs only what is new) and without
(`cache_prompt: false`, the whole history runs again), for ours and llama-server. Uses only the
standard library.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

PROMPTS = [
    "The history of the printing press begins",
    "In a small village by the sea, an old fisherman",
    "The most important idea in computer science is",
    "Once upon a time, a curious robot",
    "A good breakfast should include",
    "The city at night was quiet except for",
    "Learning a new language is easier when",
    "The mountain trail climbed steeply through",
]


def free_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_ready(port, path, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server not ready")


def sse(port, path, body):
    """The JSON chunks of one streamed (server-sent events) request, as they arrive."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    try:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            yield json.loads(data)
    finally:
        c.close()


def stream_one(port, prompt, max_tokens, ban):
    """(ttft, [gaps], tokens, (first, last token time)) of one streamed completion."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": {str(t): -100 for t in ban},
    }
    start = time.perf_counter()
    times = []
    for chunk in sse(port, "/v1/completions", body):
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            times.append(time.perf_counter())
    if not times:
        return None, [], 0, None
    gaps = [b - a for a, b in zip(times, times[1:])]
    return times[0] - start, gaps, len(times), (times[0], times[-1])


def load(port, clients, requests, max_tokens, ban):
    ttfts, gaps, tokens, errors, spans = [], [], [0], [], []
    lock = threading.Lock()

    def client(i):
        for k in range(requests):
            try:
                t, g, n, span = stream_one(port, PROMPTS[(i + k) % len(PROMPTS)], max_tokens, ban)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                if t is not None:
                    ttfts.append(t)
                gaps.extend(g)
                tokens[0] += n
                if span is not None and n > 1:
                    spans.append((span, n - 1))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start

    def pct(v, p):
        if not v:
            return float("nan")
        v = sorted(v)
        return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]

    return {
        "clients": clients,
        "tokens": tokens[0],
        "seconds": wall,
        "tok_s": tokens[0] / wall,
        "ttft_p50": pct(ttfts, 50),
        "ttft_p99": pct(ttfts, 99),
        "tpot_p50": pct(gaps, 50),
        "tpot_p99": pct(gaps, 99),
        "decode_tok_s": decode_rate(spans),
        "errors": len(errors),
    }


def median_row(rows):
    """Per-field medians of one client count's results over rounds."""
    out = dict(rows[0])
    for k, v in rows[0].items():
        if isinstance(v, float) and k != "clients":
            out[k] = statistics.median(r[k] for r in rows)
    out["errors"] = sum(r["errors"] for r in rows)
    out["rounds"] = len(rows)
    return out


def decode_rate(spans):
    """Aggregate decode tokens/s: the tokens streamed after each request's first one, over the
    time during which at least one request was between its first and last token (its prefill
    and the wait for it excluded; a decode stalled by other requests' prefills included). A
    server that answers one request at a time gets one stream's rate."""
    busy, end = 0.0, float("-inf")
    for (a, b), _ in sorted(spans):
        if b > end:
            busy += b - max(a, end)
            end = b
    return sum(n for _, n in spans) / busy if busy > 0 else float("nan")


QUESTIONS = [
    "Summarize the first paragraph in one sentence.",
    "What does the speaker say about the economy?",
    "Name one promise the speaker makes.",
    "Who is the speech addressed to?",
    "What is the tone of the speech?",
    "Give the speech a short title.",
]


def stream_chat(port, messages, max_tokens, cache):
    """(ttft, text) of one streamed greedy chat answer."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "cache_prompt": cache}
    start = time.perf_counter()
    first, text = None, []
    for chunk in sse(port, "/v1/chat/completions", body):
        piece = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
        if piece:
            first = first or time.perf_counter()
            text.append(piece)
    return (first or time.perf_counter()) - start, "".join(text)


def system_prompt(words=1150):
    sotu = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                        "sotu", "data", "2021_joseph_r_biden_d.txt")
    with open(sotu, encoding="utf-8") as f:
        text = " ".join(f.read().split()[:words])
    return "Answer questions about this speech briefly.\n\n" + text


def multi_turn(port, cache, max_tokens=32):
    """TTFT of each of 6 turns of one conversation."""
    messages = [{"role": "system", "content": system_prompt()}]
    ttfts = []
    for q in QUESTIONS:
        messages.append({"role": "user", "content": q})
        t, text = stream_chat(port, messages, max_tokens, cache)
        ttfts.append(t)
        messages.append({"role": "assistant", "content": text})
    return ttfts


def shared_prompt(port, cache, clients=16, max_tokens=16):
    """`clients` chats arriving together with the same system prompt: (mean TTFT, wall)."""
    system = {"role": "system", "content": system_prompt()}
    ttfts = [None] * clients

    def one(i):
        q = QUESTIONS[i % len(QUESTIONS)] + f" (reader {i})"
        ttfts[i], _ = stream_chat(port, [system, {"role": "user", "content": q}], max_tokens, cache)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statistics.mean(ttfts), time.perf_counter() - start


def run_server(cmd, port, health, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_ready(port, health, proc)
    except Exception:
        proc.kill()
        raise
    return proc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/llama3")
    ap.add_argument("--model", default=os.path.expanduser(
        os.environ.get("LLAMA3_HOME", "~/.cache/llama3") + "/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--llamacpp-python", help="python of a venv with llama-cpp-python[server]")
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary")
    ap.add_argument("--multi-turn", action="store_true", help="also the 6-turn chat scenario")
    ap.add_argument("--skip-load", action="store_true", help="only the chat scenarios")
    ap.add_argument("--shared", action="store_true",
                    help="also 16 chats arriving together with the same ~1,500-token system prompt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--ban", default="0,1,2", help="token ids banned (end tokens)")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds over the client counts (ours); medians are reported, and each "
                         "round's ratios to one client, measured minutes apart rather than hours")
    a = ap.parse_args()
    levels = [int(c) for c in a.clients.split(",")]
    ban = [int(t) for t in a.ban.split(",") if t]
    results = {}
    rounds = []

    port = free_port()
    ours = None if a.skip_load else run_server([a.bin, "serve", "-m", a.model, "--port", str(port), "-t", str(a.threads),
                       "--parallel", str(max(levels)), "--ctx", "512", "--queue", "256"],
                      port, "/health")
    try:
        if ours is not None:
            stream_one(port, PROMPTS[0], 4, ban)  # warm up
            rounds = [[load(port, c, a.requests, a.max_tokens, ban) for c in levels]
                      for _ in range(max(1, a.repeat))]
            results["llama3"] = [median_row([r[i] for r in rounds]) for i in range(len(levels))]
    finally:
        if ours is not None:
            ours.terminate()
            ours.wait()

    if a.llama_server and not a.skip_load:
        port = free_port()
        n = max(levels)
        ref = run_server([a.llama_server, "-m", a.model, "--port", str(port), "-t", str(a.threads),
                          "-np", str(n), "-c", str(512 * n), "--no-webui"],
                         port, "/health")
        try:
            stream_one(port, PROMPTS[0], 4, ban)
            results["llama-server"] = [load(port, c, a.requests, a.max_tokens, ban) for c in levels]
        finally:
            ref.terminate()
            ref.wait()

    shared = {}
    if a.shared:
        for mode, cache in (("cache", True), ("no cache", False)):
            # A fresh server each: the system prompt is in no cache when the chats arrive.
            port = free_port()
            proc = run_server([a.bin, "serve", "-m", a.model, "-t", str(a.threads), "--parallel",
                               "16", "--ctx", "2048", "--port", str(port)], port, "/health")
            try:
                stream_chat(port, [{"role": "user", "content": "Hi"}], 4, True)  # warm up
                shared[mode] = shared_prompt(port, cache)
            finally:
                proc.terminate()
                proc.wait()
        for mode, (ttft, wall) in shared.items():
            print(f"llama3 16 chats sharing a system prompt, {mode:<8}: mean TTFT {ttft*1e3:.0f}ms, "
                  f"all answered in {wall:.1f}s")

    turns = {}
    if a.multi_turn:
        servers = [("llama3", [a.bin, "serve", "-m", a.model, "-t", str(a.threads), "--parallel", "1",
                               "--ctx", "4096"], "--port", "/health")]
        if a.llama_server:
            servers.append(("llama-server", [a.llama_server, "-m", a.model, "-t", str(a.threads),
                                             "-np", "1", "-c", "4096", "--no-webui"], "--port", "/health"))
        for name, cmd, flag, health in servers:
            port = free_port()
            proc = run_server(cmd + [flag, str(port)], port, health)
            try:
                stream_chat(port, [{"role": "user", "content": "Hi"}], 4, True)  # warm up
                turns[name] = {"cache": multi_turn(port, True), "no cache": multi_turn(port, False)}
            finally:
                proc.terminate()
                proc.wait()

    if a.llamacpp_python and not a.skip_load:
        port = free_port()
        ref = run_server([a.llamacpp_python, "-m", "llama_cpp.server", "--model", a.model,
                          "--port", str(port), "--n_threads", str(a.threads),
                          "--n_ctx", "2048", "--verbose", "False"],
                         port, "/v1/models")
        try:
            stream_one(port, PROMPTS[0], 4, ban)
            results["llama.cpp"] = [load(port, c, a.requests, a.max_tokens, ban) for c in levels]
        finally:
            ref.terminate()
            ref.wait()

    for name, t in turns.items():
        for mode, v in t.items():
            print(f"{name:<12} multi-turn {mode:<8} TTFT per turn: "
                  + " ".join(f"{x*1e3:.0f}ms" for x in v)
                  + f" | turns 2-6 mean {statistics.mean(v[1:])*1e3:.0f}ms")
        speed = statistics.mean(t["no cache"][1:]) / statistics.mean(t["cache"][1:])
        print(f"{name:<12} multi-turn: turns 2-6 TTFT {speed:.1f}x lower with the prompt cache")
    if "llama3" in turns and "llama-server" in turns:
        r = statistics.mean(turns["llama-server"]["cache"][1:]) / statistics.mean(turns["llama3"]["cache"][1:])
        print(f"multi-turn with cache, turns 2-6 TTFT: llama-server/ours {r:.2f}")
    if not results:
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"multi_turn": turns}, f, indent=2)
        return
    print(f"{'server':<12} {'clients':>7} {'tok/s':>8} {'decode':>8} {'TTFT p50':>9} "
          f"{'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'errors':>6}")
    for name, rows in results.items():
        for r in rows:
            print(f"{name:<12} {r['clients']:>7} {r['tok_s']:>8.1f} {r['decode_tok_s']:>8.1f} "
                  f"{r['ttft_p50']*1e3:>7.0f}ms "
                  f"{r['ttft_p99']*1e3:>7.0f}ms {r['tpot_p50']*1e3:>7.1f}ms {r['tpot_p99']*1e3:>7.1f}ms "
                  f"{r['errors']:>6}")
    o = results["llama3"]
    if len(rounds) > 1:
        for i, r in enumerate(o):
            per = ", ".join(f"{x[i]['tok_s'] / x[0]['tok_s']:.2f}x / "
                            f"{x[i]['decode_tok_s'] / x[0]['decode_tok_s']:.2f}x" for x in rounds)
            print(f"llama3 at {r['clients']} clients, each round (generated / decode vs one "
                  f"client): {per}")
    for r in o:
        print(f"llama3 at {r['clients']} clients: generated tok/s {r['tok_s'] / o[0]['tok_s']:.2f}x "
              f"one client, aggregate decode {r['decode_tok_s'] / o[0]['decode_tok_s']:.2f}x")
    for ref in ("llama-server", "llama.cpp"):
        for r, l in zip(o, results.get(ref, [])):
            print(f"{r['clients']:>3} clients: ours/{ref} tok/s {r['tok_s'] / l['tok_s']:.2f}, "
                  f"decode {r['decode_tok_s'] / l['decode_tok_s']:.2f}, "
                  f"TTFT p50 {l['ttft_p50'] / r['ttft_p50']:.2f}x lower")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**results, "multi_turn": turns}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
