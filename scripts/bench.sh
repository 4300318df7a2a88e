#!/usr/bin/env bash
# Speed of `llama3 bench` next to llama.cpp's, measured the same way in one run, on the same
# model files, with the same thread count:
#   pp$P  : a prompt of P tokens in one forward (one llama_decode), logits of the last position;
#   tg$N  : then N single-token forwards (N llama_decode calls of one token) after that prompt;
#   ttft  : a 16-token prompt from an empty context to its first token;
#   load  : model load time; peak RSS: VmHWM of the process (Python's own ~30 MiB included on
#           the llama.cpp side).
# llama.cpp is driven through llama-cpp-python from PyPI, installed into a venv under the cache
# dir ($LLAMA3_BENCH_CACHE, default ~/.cache/llama3/bench). pip builds llama.cpp from source
# with CMAKE_ARGS="-DGGML_NATIVE=ON": the first run takes minutes (45 here, on two cores shared
# with other builds).
# Nothing of llama.cpp enters this repository.
#
# Usage: scripts/bench.sh [EXTRA_MODEL.gguf ...]
#   The default model (SmolLM2-135M-Instruct Q4_1, `llama3 pull`) is always measured first;
#   extra GGUF files (e.g. Q8_0/F16 from `llama3 quantize`) are measured after it.
# Environment: P (512), N (128), THREADS (2), REPS (5), N_CTX (1024),
#   LLAMA_CPP_PYTHON_VERSION (0.3.16), OMP_WAIT_POLICY (PASSIVE, see below).
set -euo pipefail
cd "$(dirname "$0")/.."

P="${P:-512}"
N="${N:-128}"
THREADS="${THREADS:-2}"
REPS="${REPS:-5}"
N_CTX="${N_CTX:-1024}"
version="${LLAMA_CPP_PYTHON_VERSION:-0.3.16}"
cache="${LLAMA3_BENCH_CACHE:-$HOME/.cache/llama3/bench}"
venv="$cache/venv-llama-cpp-python-$version"
out="$cache/results-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
# llama.cpp's CPU backend (built with OpenMP) waits at a barrier after every op; libgomp's
# default active wait spins, and when another process holds one of the cores the spinning thread
# stalls its partner: measured here, 5 s per generated token instead of 14 ms. Passive waiting
# costs a little on an idle machine and keeps the numbers meaningful on a shared one. Set
# OMP_WAIT_POLICY=ACTIVE on a quiet machine for llama.cpp's best case.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "installing llama-cpp-python==$version into $venv (builds llama.cpp from source with" \
       "-DGGML_NATIVE=ON; this takes minutes)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$venv/bin/pip" install --no-cache-dir "llama-cpp-python==$version" >&2
fi

cargo build --release --bin llama3 >&2
bin=./target/release/llama3
models=("$($bin pull)" "$@")

for i in "${!models[@]}"; do
  m="${models[$i]}"
  [ -f "$m" ] || { echo "error: no model file $m" >&2; exit 1; }
  echo "[$((i + 1))/${#models[@]}] $m: llama3" >&2
  "$bin" bench -m "$m" -p "$P" -n "$N" -t "$THREADS" -r "$REPS" --json >"$out/$i.llama3.json"
  echo "[$((i + 1))/${#models[@]}] $m: llama.cpp (llama-cpp-python $version)" >&2
  "$venv/bin/python" - "$m" "$P" "$N" "$THREADS" "$REPS" "$N_CTX" >"$out/$i.llamacpp.json" <<'PY'
# The measurements of `llama3 bench` (crates/llama3-cli/src/bench.rs) through llama-cpp-python:
# same token ids, one warm-up (the prompt and one token), then REPS repetitions.
import json, statistics, sys, time

import numpy as np
from llama_cpp import Llama

path, P, N, T, R, n_ctx = sys.argv[1], *map(int, sys.argv[2:])
M = 2**64

def tokens(n, vocab, seed):
    # bench.rs `tokens`: a 64-bit LCG, ids spread over the vocabulary.
    x = (seed * 6364136223846793005 + 1) % M
    out = []
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) % M
        out.append((x >> 33) % vocab)
    return out

def summary(xs):
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "samples": xs}

def peak_rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None

t0 = time.perf_counter()
llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=max(P, 16), n_ubatch=max(P, 16), n_threads=T,
            n_threads_batch=T, verbose=False)
load = time.perf_counter() - t0
vocab = llm.n_vocab()
prompt, gen, short = tokens(P, vocab, 1), tokens(N, vocab, 2), tokens(16, vocab, 3)

def run_once(gen):
    llm.reset()  # n_tokens = 0: the next eval drops the KV cache from position 0
    t = time.perf_counter()
    if prompt:
        llm.eval(prompt)  # one llama_decode (n_batch >= P), logits of the last position
    pp = time.perf_counter() - t
    t = time.perf_counter()
    for tok in gen:
        llm.eval([tok])
    return pp, time.perf_counter() - t

def ttft():
    llm.reset()
    t = time.perf_counter()
    llm.eval(short)
    int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return time.perf_counter() - t

run_once(gen[:1])
ttft()
pp, tg, first = [], [], []
for _ in range(R):
    pp_s, tg_s = run_once(gen)
    pp.append(P / pp_s if P else 0.0)
    tg.append(N / tg_s if N else 0.0)
    first.append(ttft() * 1e3)
print(json.dumps({"load_seconds": load, "pp_tokens_per_second": summary(pp),
                  "tg_tokens_per_second": summary(tg), "ttft_ms": summary(first),
                  "peak_rss_bytes": peak_rss(), "threads": T, "n_ctx": n_ctx}))
PY
done

python3 - "$out" "$P" "$N" "$THREADS" "${models[@]}" <<'PY'
import json, os, sys

out, P, N, T, models = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]

def cell(s):
    return f"{s['mean']:.2f} ± {s['sd']:.2f}" if isinstance(s, dict) else f"{s:.3f}"

def mean(s):
    return s["mean"] if isinstance(s, dict) else s

print(f"threads {T}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; ours = llama3 bench, llama.cpp = llama-cpp-python; ratio = ours / llama.cpp")
print("(t/s: higher is better; ms, s and MiB: lower is better)\n")
print("| model | test | llama3 | llama.cpp | ratio |")
print("| --- | --- | ---: | ---: | ---: |")
for i, m in enumerate(models):
    ours = json.load(open(os.path.join(out, f"{i}.llama3.json")))
    theirs = json.load(open(os.path.join(out, f"{i}.llamacpp.json")))
    name = os.path.basename(m)
    rows = [(f"pp{P} t/s", "pp_tokens_per_second"), (f"tg{N} t/s", "tg_tokens_per_second"),
            ("ttft16 ms", "ttft_ms"), ("load s", "load_seconds")]
    for label, key in rows:
        a, b = ours.get(key), theirs.get(key)
        if a is None or b is None:
            continue
        print(f"| {name} | {label} | {cell(a)} | {cell(b)} | {mean(a) / mean(b):.2f} |")
    a, b = ours.get("peak_rss_bytes"), theirs.get("peak_rss_bytes")
    if a and b:
        print(f"| {name} | peak RSS MiB | {a / 2**20:.1f} | {b / 2**20:.1f} | {a / b:.2f} |")
print(f"\nraw JSON: {out}")
PY
