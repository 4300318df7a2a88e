#!/usr/bin/env python3
"""Converts ../shared/data/chitchat (BYU PCC Chit-Chat, {uuid: {messages: [[utterance...], ...]}})
to chat JSONL for `llama3 train`: turns alternate user / assistant, each turn's utterances joined.

    python3 scripts/chitchat_to_jsonl.py [N_CONVERSATIONS] [MAX_TURNS] > chitchat.jsonl
"""
import gzip
import json
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
max_turns = int(sys.argv[2]) if len(sys.argv) > 2 else 8
data = json.load(gzip.open("../shared/data/chitchat/dataset.json.gz"))
for key in list(data)[:n]:
    turns = data[key]["messages"][:max_turns]
    msgs = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": " ".join(u["text"] for u in t)}
        for i, t in enumerate(turns)
    ]
    if len(msgs) >= 2:
        print(json.dumps({"messages": msgs}))
