#!/usr/bin/env python3
"""Reference data for PEFT sequence-classification adapters (crates/llama3/tests/data/peft_seq_cls).

A LoRA adapter made by PEFT itself with task_type="SEQ_CLS" on the tiny GQA model of
../shared/golden/hf/gqa/model: LoRA on q/v/down (random A and B, so it changes the output) and
the classification head `score` trained in full (PEFT's modules_to_save; perturbed here), saved
with `save_pretrained`, plus PEFT's logits for three right-padded rows.

    python3 scripts/make_peft_seq_cls.py ../shared/golden/hf/gqa/model crates/llama3/tests/data/peft_seq_cls

Needs torch, transformers and peft (e.g. the scripts/train_bench.sh venv plus `pip install
transformers peft`).
"""

import json
import os
import sys

import peft
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaForSequenceClassification


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(11)
    cls = LlamaForSequenceClassification.from_pretrained(model_dir, num_labels=3).eval()
    cls.config.pad_token_id = 0
    cfg = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, init_lora_weights=False,
                     target_modules=["q_proj", "v_proj", "down_proj"])
    model = get_peft_model(cls, cfg).eval()
    with torch.no_grad():
        model.base_model.model.score.modules_to_save["default"].weight.normal_(0, 0.5)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, cls.config.vocab_size, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    for row, length in ((1, 8), (2, 4)):
        ids[row, length:] = 0
        mask[row, length:] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(out)
    save_file({"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(),
               "logits": logits.contiguous()}, os.path.join(out, "golden.safetensors"))
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "peft": peft.__version__, "base": "../shared/golden/hf/gqa/model"}, f, indent=2)
    print(logits)


if __name__ == "__main__":
    main()
