#!/usr/bin/env python3
"""Preference pairs from the Rotten Tomatoes corpus of ../shared/data/rotten-tomatoes (Pang & Lee's
movie reviews; see its PROVENANCE.md): for a movie with both kinds of review, the prompt asks for
a review of it, `chosen` is a "fresh" (positive) review and `rejected` a "rotten" (negative) one,
as chat message lists. The held-out pairs are of other movies than the training pairs.

    scripts/make_pref_pairs.py OUT_DIR [--train N] [--valid N] [--shared DIR]

writes OUT_DIR/train.jsonl and OUT_DIR/valid.jsonl (standard library only).
"""
import argparse
import bz2
import csv
import io
import json
import random
from collections import defaultdict
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--valid", type=int, default=64)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    a = ap.parse_args()
    src = Path(a.shared) / "data/rotten-tomatoes/rotten_tomatoes_corpus.csv.bz2"
    reviews = defaultdict(lambda: {"fresh": [], "rotten": []})
    with io.TextIOWrapper(bz2.open(src), encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] in ("fresh", "rotten"):
                reviews[row["movie_name"]][row["category"]].append(row["text"].strip())
    movies = sorted(m for m, r in reviews.items() if r["fresh"] and r["rotten"])
    random.Random(0).shuffle(movies)

    def pairs(names):
        for m in names:
            r = reviews[m]
            title = m.replace("_", " ").title()
            for fresh, rotten in zip(r["fresh"], r["rotten"]):
                prompt = [{"role": "user", "content": f"Write a one-sentence review of the movie {title}."}]
                yield {"prompt": prompt, "chosen": [{"role": "assistant", "content": fresh}],
                       "rejected": [{"role": "assistant", "content": rotten}]}

    cut = len(movies) // 5
    valid = list(pairs(movies[:cut]))[: a.valid]
    train = list(pairs(movies[cut:]))[: a.train]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("valid", valid)):
        with open(out / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    print(f"{out}: {len(train)} training pairs, {len(valid)} held-out pairs of other movies")


if __name__ == "__main__":
    main()
