#!/usr/bin/env python3
"""Writes crates/llama3/tests/data/iq4_golden.json: IQ4_NL and IQ4_XS blocks and their values
as llama.cpp's own Python package, gguf-py (`gguf.quants.dequantize`), computes them.

The blocks are fixed pseudo-random bytes (valid by construction: every byte pattern is a
block; d is set to a small f16), so the golden tests our reading of the format against the
reference implementation, never against our own output.

Usage: scripts/make_iq4_golden.py   (installs gguf==0.17.1 and numpy into a cache venv
under ~/.cache/llama3/golden-venv on first use, then re-runs itself there)
"""
import json
import os
import subprocess
import sys
from pathlib import Path

VENV = Path(os.environ.get("LLAMA3_GOLDEN_VENV", Path.home() / ".cache/llama3/golden-venv"))
OUT = Path(__file__).resolve().parent.parent / "crates/llama3/tests/data/iq4_golden.json"

try:
    import numpy as np
    import gguf
    from gguf.quants import dequantize
except ImportError:
    if os.environ.get("LLAMA3_GOLDEN_IN_VENV"):
        raise
    if not (VENV / "bin/python").exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(VENV / "bin/pip"), "install", "-q", "gguf==0.17.1", "numpy"])
    env = dict(os.environ, LLAMA3_GOLDEN_IN_VENV="1")
    sys.exit(subprocess.call([str(VENV / "bin/python"), __file__], env=env))


def blocks(ty, n_blocks, seed):
    _, type_size = gguf.GGML_QUANT_SIZES[ty]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    d = (np.arange(n_blocks) % 7 + 1).astype(np.float16) / np.float16(256)
    raw[:, 0:2] = d.view(np.uint8).reshape(n_blocks, 2)
    return raw


from importlib.metadata import version

out = {"source": f"gguf-py {version('gguf')} gguf.quants.dequantize"}
for name, ty, n in [("IQ4_NL", gguf.GGMLQuantizationType.IQ4_NL, 16),
                    ("IQ4_XS", gguf.GGMLQuantizationType.IQ4_XS, 2)]:
    raw = blocks(ty, n, seed=int(ty))
    values = dequantize(raw.reshape(-1), ty).reshape(-1)
    out[name] = {"bytes": raw.tobytes().hex(), "values": [float(v) for v in values]}
OUT.write_text(json.dumps(out) + "\n")
print(f"wrote {OUT}")
