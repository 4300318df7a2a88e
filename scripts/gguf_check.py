#!/usr/bin/env python3
"""Cross-check a GGUF written by `llama3 quantize` with llama.cpp's own reader.

Reads FILE with gguf-py (`pip install gguf`, llama.cpp's gguf-py from PyPI): prints every
metadata key (long values shortened), the tensor types, and dequantizes every tensor with
gguf-py's numpy reference dequantizers. With --ref REF (another GGUF of the same model, e.g.
the one it was quantized from), also prints per-tensor max |a - b| / max |b|, so that our
blocks are decoded by llama.cpp's code, not ours.

Not part of CI: run it by hand, e.g.
    pip install gguf
    llama3 quantize model.Q4_1.gguf /tmp/m.q4_k.gguf --type q4_k
    python3 scripts/gguf_check.py /tmp/m.q4_k.gguf --ref model.Q4_1.gguf
"""

import argparse
import collections
import sys

import numpy as np

try:
    import gguf
    from gguf import quants
except ImportError:
    sys.exit("needs llama.cpp's gguf-py: pip install gguf")


def show(value, limit=70):
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def field_value(field):
    types = field.types
    if types and types[0] == gguf.GGUFValueType.ARRAY:
        return f"[{len(field.data)} x {gguf.GGUFValueType(types[-1]).name}]"
    try:
        return show(field.contents())
    except Exception as e:  # gguf-py versions differ in what contents() handles
        return f"<unreadable: {e}>"


def dequantized(t):
    return np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--ref", help="a GGUF to compare tensor values with")
    args = ap.parse_args()

    r = gguf.GGUFReader(args.file)
    print(f"{args.file}: GGUF v{r.fields['GGUF.version'].contents()}, "
          f"{len(r.tensors)} tensors, {len(r.fields)} fields")
    for name, field in r.fields.items():
        if not name.startswith("GGUF."):
            print(f"  {name:45} {field_value(field)}")

    counts = collections.Counter(t.tensor_type.name for t in r.tensors)
    print("tensor types:", ", ".join(f"{k} x{v}" for k, v in counts.most_common()))

    ref = {t.name: t for t in gguf.GGUFReader(args.ref).tensors} if args.ref else {}
    worst = 0.0
    for t in r.tensors:
        values = dequantized(t)  # raises if gguf-py cannot decode the blocks
        if values.size != int(np.prod(t.shape)) or not np.isfinite(values).all():
            sys.exit(f"{t.name}: bad values")
        line = f"  {t.name:32} {t.tensor_type.name:5} {list(map(int, t.shape))}"
        if t.name in ref:
            b = dequantized(ref[t.name])
            rel = float(np.max(np.abs(values - b)) / max(float(np.max(np.abs(b))), 1e-30))
            worst = max(worst, rel)
            line += f"  max|d|/max|ref| {rel:.2e} (ref {ref[t.name].tensor_type.name})"
        print(line)
    if ref:
        missing = sorted(set(ref) - {t.name for t in r.tensors})
        print(f"largest relative difference to {args.ref}: {worst:.2e}; "
              f"tensors only in ref: {missing or 'none'}")


if __name__ == "__main__":
    main()
