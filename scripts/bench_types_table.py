#!/usr/bin/env python3
"""Markdown tables of a scripts/bench_types.sh results dir (called by it; rerun by hand on a dir).

Usage: bench_types_table.py RESULTS_DIR [P=512] [N=128]
Reads RESULTS_DIR/runs.txt ("label|type|path" per measured file, in order) and, per file i,
  i.<label>.<type>.llama3.json          `llama3 bench --json`
  i.<label>.<type>.llamacpp-POLICY-d0.json  `llama-bench -p P -n N -d 0 -o json`  (pp P, tg N at
                                            depth 0) under OMP_WAIT_POLICY=POLICY
  i.<label>.<type>.llamacpp-POLICY-dP.json  `llama-bench -p 0 -n N -d P -o json`  (tg N at depth P)
llama.cpp's figure is the best over the policies run (the strongest reference).
  i.<label>.<type>.llama3-ppl.json, .llamacpp-ppl.log, .*-ppl.wall.json   (PERPLEXITY=1 only)
A missing or empty file (a refused model) prints as "—".
"""
import glob
import json
import os
import re
import sys

out = sys.argv[1]
P = int(sys.argv[2]) if len(sys.argv) > 2 else 512
N = int(sys.argv[3]) if len(sys.argv) > 3 else 128


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def llamacpp(tag, suffix, n_prompt, n_gen, n_depth):
    """(avg_ts, stddev_ts) of the llama-bench test with these sizes, best over the wait
    policies run (files tag.llamacpp-*-suffix.json; an older run's tag.llamacpp-suffix.json), or
    None."""
    best = None
    for path in glob.glob(f"{glob.escape(tag)}.llamacpp-*{suffix}.json"):
        for r in load(path) or []:
            if (r["n_prompt"], r["n_gen"], r["n_depth"]) == (n_prompt, n_gen, n_depth):
                if best is None or r["avg_ts"] > best[0]:
                    best = (r["avg_ts"], r["stddev_ts"])
    return best


def ours(js, key):
    return (js[key]["mean"], js[key]["sd"]) if js and js.get(key) else None


def cell(a, b):
    f = lambda x: f"{x[0]:.1f}" if x else "—"
    return f"{f(a)} / {f(b)}"


def ratio(a, b):
    return f"{a[0] / b[0]:.2f}" if a and b and b[0] else "—"


def kernels(js):
    # "Q4_K packed (llama3 kernels)" -> "Q4_K x49"; candle's generic matmul -> "Q6_K x8 **slow**"
    if not js:
        return "refused"
    parts = []
    for name, n in js.get("matmul_kernels", []):
        parts.append(f"{name.split()[0]} x{n}" + (" **slow**" if "slow" in name else ""))
    return ", ".join(parts)


runs = [line.rstrip("\n").split("|") for line in open(os.path.join(out, "runs.txt")) if line.strip()]
env = open(os.path.join(out, "env.txt")).readline().strip() if os.path.exists(
    os.path.join(out, "env.txt")) else ""
print(f"{env}; t/s, higher is better; ratio = ours / llama.cpp")
print(f"ours: llama3 bench -p {P} -n {N} (tg after the {P}-token prompt); llama.cpp: llama-bench "
      f"pp{P} at depth 0, tg{N} at depth {P} (tg{N} at depth 0 in the last column but one)\n")
print(f"| model | type | MiB | ours pp{P} / tg{N} | llama.cpp pp{P} / tg{N} | ratio pp / tg "
      f"| llama.cpp tg{N} d0 | ours kernels |")
print("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
ppl_rows = []
for i, (label, typ, path) in enumerate(runs):
    tag = os.path.join(out, f"{i}.{label}.{typ.replace(' ', '_')}")
    js = load(tag + ".llama3.json")
    o_pp, o_tg = ours(js, "pp_tokens_per_second"), ours(js, "tg_tokens_per_second")
    l_pp, l_tg = llamacpp(tag, "d0", P, 0, 0), llamacpp(tag, f"d{P}", 0, N, P)
    l_tg0 = llamacpp(tag, "d0", 0, N, 0)
    mib = f"{os.path.getsize(path) / 2**20:.0f}" if os.path.exists(path) else "—"
    tg0 = f"{l_tg0[0]:.1f}" if l_tg0 else "—"
    print(f"| {label} | {typ} | {mib} | {cell(o_pp, o_tg)} | {cell(l_pp, l_tg)} "
          f"| {ratio(o_pp, l_pp)} / {ratio(o_tg, l_tg)} | {tg0} | {kernels(js)} |")

    # Perplexity (PERPLEXITY=1): ours from --json, llama.cpp's from its log's final estimate.
    pj = load(tag + ".llama3-ppl.json")
    log = tag + ".llamacpp-ppl.log"
    if pj is None and not os.path.exists(log):
        continue
    theirs = None
    if os.path.exists(log):
        m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", open(log).read())
        theirs = (float(m.group(1)), float(m.group(2))) if m else None
    ow, tw = load(tag + ".llama3-ppl.wall.json"), load(tag + ".llamacpp-ppl.wall.json")
    ppl_rows.append((label, typ,
                     f"{pj['ppl']:.4f} ± {pj['ppl_stderr']:.4f}" if pj else "—",
                     f"{theirs[0]:.4f} ± {theirs[1]:.4f}" if theirs else "—",
                     f"{ow['wall_ms'] / 1e3:.1f}" if ow else "—",
                     f"{tw['wall_ms'] / 1e3:.1f}" if tw else "—",
                     str(pj.get("n_scored", "")) if pj else ""))

if ppl_rows:
    print("\nperplexity (llama.cpp's protocol, -c 512; wall seconds include loading)\n")
    print("| model | type | ours ppl | llama.cpp ppl | ours s | llama.cpp s | tokens scored |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in ppl_rows:
        print("| " + " | ".join(r) + " |")
