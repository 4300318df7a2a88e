#!/usr/bin/env python3
"""The Python package's costs next to the CLI's, measured in one run (docs/python.md):

  generate : tokens/s of `Llama3.generate` and of `llama3 generate --json` (its
             `tokens_per_second`: generated tokens over the time after the prompt) on the
             default model, greedy, the same prompt and token count, end tokens banned so both
             generate all of them; rounds alternate, medians reported, and the ratio. Python is
             measured streamed (from the first piece to the last) and not streamed ((n - 1)
             over the time of an n-token call less that of a 1-token call);
  import   : `import llama3` in a fresh interpreter, median of 5;
  wheel    : the wheel's size.

Run it with the python of a venv where the wheel is installed:

    VENV/bin/python scripts/py_bench.py [--bin target/release/llama3] [--wheel dist/llama3-*.whl]
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT = "The history of the city of Paris begins"


def cli_rate(binary, n):
    out = subprocess.run([binary, "generate", "-p", PROMPT, "--greedy", "--json", "-n", str(n),
                          "--logit-bias", "0=-inf", "--logit-bias", "2=-inf", "-t", "2"],
                         check=True, capture_output=True, text=True).stdout
    j = json.loads(out)
    assert len(j["ids"]) == n, len(j["ids"])
    return j["tokens_per_second"]


def py_rate(llm, n):
    # The CLI's measure: the time after the prompt's forward, which also gives the first
    # token; so from the first piece to the last, n - 1 forwards (pieces are tokens here: the
    # prompt and banned end tokens keep every piece whole).
    it = llm.generate(PROMPT, max_tokens=n, temperature=0, logit_bias={0: -1e30, 2: -1e30},
                      stream=True)
    first = None
    count = 0
    for _ in it:
        count += 1
        if first is None:
            first = time.perf_counter()
    return (n - 1) / (time.perf_counter() - first), count


def py_batch_rate(llm, n):
    # The same prompt every time: its forward is cached, so the two calls differ by the n - 1
    # forwards after the first token.
    kw = dict(temperature=0, logit_bias={0: -1e30, 2: -1e30})
    t = time.perf_counter()
    llm.generate(PROMPT, max_tokens=1, **kw)
    one = time.perf_counter() - t
    t = time.perf_counter()
    out = llm.generate(PROMPT, max_tokens=n, **kw)
    assert len(out.token_ids) == n, len(out.token_ids)
    return (n - 1) / (time.perf_counter() - t - one)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/llama3")
    ap.add_argument("--wheel", default=None)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", "2")

    imports = []
    for _ in range(5):
        t = subprocess.run([sys.executable, "-c",
                            "import time; t = time.perf_counter(); import llama3; "
                            "print(time.perf_counter() - t)"],
                           check=True, capture_output=True, text=True).stdout
        imports.append(float(t))

    import llama3

    llm = llama3.Llama3(verbose=False)
    py_rate(llm, 8)  # warm up
    py_batch_rate(llm, 8)
    cli, py, batch = [], [], []
    for i in range(a.rounds):
        cli.append(cli_rate(a.bin, a.n))
        rate, _ = py_rate(llm, a.n)
        py.append(rate)
        batch.append(py_batch_rate(llm, a.n))
        print(f"round {i + 1}: cli {cli[-1]:.1f} tok/s, python streamed {py[-1]:.1f} tok/s, "
              f"not streamed {batch[-1]:.1f}", file=sys.stderr)
    wheel = a.wheel or (sorted(glob.glob("dist/llama3-*.whl")) or [None])[-1]
    mc, mp, mb = statistics.median(cli), statistics.median(py), statistics.median(batch)
    print(f"generate {a.n} tokens, greedy, default model, 2 threads, {a.rounds} alternating rounds")
    print(f"| | tokens/s (median) | rounds |")
    print(f"|---|---|---|")
    print(f"| llama3 generate (CLI) | {mc:.1f} | {' / '.join(f'{x:.1f}' for x in cli)} |")
    print(f"| Llama3.generate(stream=True) | {mp:.1f} | {' / '.join(f'{x:.1f}' for x in py)} |")
    print(f"| Llama3.generate | {mb:.1f} | {' / '.join(f'{x:.1f}' for x in batch)} |")
    print(f"ratio python / cli: streamed {mp / mc:.3f}, not streamed {mb / mc:.3f}")
    print(f"import llama3: {statistics.median(imports) * 1000:.1f} ms (median of 5)")
    if wheel:
        print(f"wheel {os.path.basename(wheel)}: {os.path.getsize(wheel) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
