#!/usr/bin/env python3
"""Retrieval with llama3 embeddings on State of the Union passages (docs/retrieval.md).

Passages: the addresses of YEARS (../shared/data/sotu), split into sentences and cut into
groups of five; the query is a group's first sentence, the document its other four. Every
query ranks every document by cosine similarity; we report recall@1, recall@10 and MRR for
mean and last-token pooling, beside a TF-IDF (lexical) baseline computed on the same split.

    python scripts/retrieval.py [--model PATH] [--passages 400] [--years 2009-2021]

Needs the `llama3` package (the wheel) and numpy.
"""

import argparse
import math
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from llama3 import Llama3

HERE = Path(__file__).resolve().parent
SOTU = HERE.parent.parent / "shared" / "data" / "sotu" / "data"


def passages(years, limit):
    """(query, document) pairs from the addresses of `years`, in file order."""
    pairs = []
    for f in sorted(SOTU.glob("*.txt")):
        if int(f.name[:4]) not in years:
            continue
        text = " ".join(f.read_text(encoding="utf-8").split())
        sents = re.split(r'(?<=[.!?])\s+(?=["A-Z])', text)
        for i in range(0, len(sents) - 4, 5):
            q, doc = sents[i], " ".join(sents[i + 1:i + 5])
            if len(q.split()) >= 8 and len(doc.split()) >= 30:
                pairs.append((q, doc))
    step = max(1, len(pairs) // limit)
    return pairs[::step][:limit]


def metrics(sim):
    """recall@1, recall@10 and MRR of a (queries, documents) similarity matrix whose right
    answers are on the diagonal."""
    right = np.diag(sim)[:, None]
    rank = (sim > right).sum(axis=1) + 1  # 1 = first
    return (rank <= 1).mean(), (rank <= 10).mean(), (1.0 / rank).mean()


def tfidf(queries, docs):
    tok = lambda s: re.findall(r"[a-z0-9']+", s.lower())
    df = Counter(w for d in docs for w in set(tok(d)))
    n = len(docs)
    idf = {w: math.log((1 + n) / (1 + c)) + 1 for w, c in df.items()}
    vocab = {w: i for i, w in enumerate(idf)}

    def vec(s):
        v = np.zeros(len(vocab), dtype=np.float32)
        for w, c in Counter(tok(s)).items():
            if w in vocab:
                v[vocab[w]] = c * idf[w]
        return v / (np.linalg.norm(v) or 1.0)

    return np.stack([vec(q) for q in queries]) @ np.stack([vec(d) for d in docs]).T


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="GGUF or HF directory (default: the default model)")
    ap.add_argument("--passages", type=int, default=400)
    ap.add_argument("--years", default="2009-2021", help="first-last year of the addresses")
    a = ap.parse_args()
    first, last = (int(y) for y in a.years.split("-"))
    pairs = passages(range(first, last + 1), a.passages)
    queries, docs = [p[0] for p in pairs], [p[1] for p in pairs]
    print(f"{len(pairs)} passages from the {first}-{last} addresses; "
          f"{sum(len(d.split()) for d in docs) / len(docs):.0f} words per document", file=sys.stderr)
    llm = Llama3(a.model, verbose=False)
    rows = [("TF-IDF (lexical baseline)",) + metrics(tfidf(queries, docs)) + (0.0,)]
    for pooling in ("mean", "last"):
        t = time.time()
        q = llm.embed(queries, pooling=pooling)
        d = llm.embed(docs, pooling=pooling)
        rows.append((f"llama3 embed, {pooling} pooling",) + metrics(q @ d.T) + (time.time() - t,))
    print(f"\nmodel: {llm.info.get('path')}\n")
    print("| method | recall@1 | recall@10 | MRR | seconds |")
    print("|---|---|---|---|---|")
    for name, r1, r10, mrr, secs in rows:
        print(f"| {name} | {r1:.3f} | {r10:.3f} | {mrr:.3f} | {secs:.0f} |")
    print(f"| random ranking (expected) | {1 / len(pairs):.3f} | {10 / len(pairs):.3f} | "
          f"{sum(1 / k for k in range(1, len(pairs) + 1)) / len(pairs):.3f} | |")


if __name__ == "__main__":
    main()
