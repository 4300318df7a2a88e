#!/usr/bin/env python3
"""Load benchmark of `llama3 serve` against llama.cpp's server (llama-cpp-python), same run.

For 1, 4, 16 and 64 concurrent clients, each client streams `--requests` completions of
`--max-tokens` tokens (end tokens banned through logit_bias so every answer has the same
length). Reports aggregate generated tokens/s (all tokens over the wall time, prompts and
TTFT included), aggregate decode tokens/s (tokens after each request's first, over the time
in which some request was decoding: see `decode_rate`), time to first token (TTFT) and time
per output token (gaps between streamed tokens), p50 and p99, and ours/llama.cpp ratios.

    python3 scripts/serve_bench.py [--bin target/release/llama3] [--model GGUF]
        [--llamacpp-python VENV/bin/python] [--threads 2] [--max-tokens 64] [--repeat N]

The llama.cpp reference is `python -m llama_cpp.server` from llama-cpp-python[server] (see
scripts/bench.sh for its venv); without --llamacpp-python only ours is measured. Uses only
the standard library.
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


def stream_one(port, prompt, max_tokens, ban):
    """(ttft, [gaps], tokens, (first, last token time)) of one streamed completion."""
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": {str(t): -100 for t in ban},
    }
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    c.request("POST", "/v1/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:200]!r}")
    times = []
    for line in r:
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            times.append(time.perf_counter())
    c.close()
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

    port = free_port()
    ours = run_server([a.bin, "serve", "-m", a.model, "--port", str(port), "-t", str(a.threads),
                       "--parallel", str(max(levels)), "--ctx", "512", "--queue", "256"],
                      port, "/health")
    try:
        stream_one(port, PROMPTS[0], 4, ban)  # warm up
        rounds = [[load(port, c, a.requests, a.max_tokens, ban) for c in levels]
                  for _ in range(max(1, a.repeat))]
        results["llama3"] = [median_row([r[i] for r in rounds]) for i in range(len(levels))]
    finally:
        ours.terminate()
        ours.wait()

    if a.llamacpp_python:
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

    print(f"{'server':<10} {'clients':>7} {'tok/s':>8} {'decode':>8} {'TTFT p50':>9} "
          f"{'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'errors':>6}")
    for name, rows in results.items():
        for r in rows:
            print(f"{name:<10} {r['clients']:>7} {r['tok_s']:>8.1f} {r['decode_tok_s']:>8.1f} "
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
    if "llama.cpp" in results:
        for r, l in zip(o, results["llama.cpp"]):
            print(f"{r['clients']:>3} clients: ours/llama.cpp tok/s {r['tok_s'] / l['tok_s']:.2f}, "
                  f"decode {r['decode_tok_s'] / l['decode_tok_s']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
