#!/usr/bin/env python3
"""Reference outputs of HF PEFT for the adapter kinds beyond plain LoRA, on the tiny GQA model of
../shared/golden/hf/gqa/model (f32), written under crates/llama3/tests/data/:

- peft_dora/:   LoRA with use_dora=True on all seven projections (random A, B and magnitudes, so
                every part of DoRA changes the output), PEFT's logits unmerged and after
                merge_and_unload;
- peft_prompt/: prompt tuning, 5 virtual tokens (PEFT's random init);
- peft_prefix/: prefix tuning, 5 virtual tokens, no projection (a pre-filled KV per layer);
- trl_dpo/:     one DPO step of TRL's DPOTrainer (full model, a separate reference model):
                the tokenized pairs TRL built, the reference log-probabilities, the loss of each
                loss_type (sigmoid, hinge, ipo, robust) and, for sigmoid and ipo, the gradient of
                every weight;

each saved with `save_pretrained` beside golden.safetensors (input_ids, attention_mask, logits)
and versions.json. The tests load these adapters and compare logits: never against our own
output.

    scripts/make_peft_goldens.py [BASE_MODEL_DIR]

Installs torch, transformers, peft and trl (pinned) into a cache venv under
~/.cache/llama3/peft-venv on first use, then re-runs itself there. `--check-adapter DIR` instead
loads an adapter we trained into PEFT and prints PEFT's logits for the ids in DIR/ids.json (the
scripted check that PEFT reads what we write; see scripts/peft_roundtrip.sh).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

VENV = Path(os.environ.get("LLAMA3_PEFT_VENV", Path.home() / ".cache/llama3/peft-venv"))
PINS = ["torch==2.15.0", "transformers==5.25.0", "peft==0.21.2", "trl==1.16.0", "safetensors"]
ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "crates/llama3/tests/data"

try:
    import peft
    import torch
    import transformers
    from safetensors.torch import load_file, save_file
except ImportError:
    if os.environ.get("LLAMA3_PEFT_IN_VENV"):
        raise
    if not (VENV / "bin/python").exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    subprocess.check_call([str(VENV / "bin/pip"), "install", "-q", *PINS])
    env = dict(os.environ, LLAMA3_PEFT_IN_VENV="1")
    sys.exit(subprocess.call([str(VENV / "bin/python"), __file__, *sys.argv[1:]], env=env))

from peft import (LoraConfig, PeftModel, PrefixTuningConfig, PromptTuningConfig,  # noqa: E402
                  get_peft_model)
from transformers import LlamaForCausalLM  # noqa: E402


def inputs(vocab):
    """Two rows, the second right-padded: the padded positions' logits are not compared."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, vocab, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    ids[1, 7:] = 0
    mask[1, 7:] = 0
    return ids, mask


def write(model, out, base, ids, mask, **extra):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(out)
    cfg_file = Path(out, "adapter_config.json")
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = "../shared/golden/hf/gqa/model"
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tensors = {"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(),
               "logits": logits.contiguous()}
    tensors.update({k: v.contiguous() for k, v in extra.items()})
    save_file(tensors, os.path.join(out, "golden.safetensors"))
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "transformers": transformers.__version__,
                   "peft": peft.__version__, "base": "../shared/golden/hf/gqa/model"}, f, indent=2)
    print(f"wrote {out}: logits {tuple(logits.shape)}")


def dora(base_dir, ids, mask):
    torch.manual_seed(5)
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    cfg = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, use_dora=True,
                     init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj", "down_proj"])
    model = get_peft_model(base, cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.2 * torch.randn_like(p))
    out = DATA / "peft_dora"
    write(model, out, base_dir, ids, mask)
    # PEFT's own merge (DoRA's magnitudes folded into the weights), for the merged check.
    with torch.no_grad():
        merged = model.merge_and_unload()(input_ids=ids, attention_mask=mask).logits
    t = load_file(out / "golden.safetensors")
    t["merged_logits"] = merged.contiguous()
    save_file(t, out / "golden.safetensors")


def prompt(base_dir, ids, mask):
    torch.manual_seed(6)
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    cfg = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    model = get_peft_model(base, cfg).eval()
    write(model, DATA / "peft_prompt", base_dir, ids, mask)


def prefix(base_dir, ids, mask):
    torch.manual_seed(7)
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5)
    model = get_peft_model(base, cfg).eval()
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.mul_(0.5)
    write(model, DATA / "peft_prefix", base_dir, ids, mask)


def dpo(base_dir):
    """One DPO step in TRL: its loss for each loss_type and the gradients of every weight."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer
    import trl

    def fresh_models():
        """The policy (the base model) and a reference 2% off it, fresh for each loss."""
        torch.manual_seed(8)
        model = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        ref = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            for p in ref.parameters():
                p.add_(0.02 * torch.randn_like(p))
        return model, ref

    model, _ = fresh_models()
    # A word-level tokenizer over the model's 512 ids ("<0>".."<511>"), so the pairs are token
    # ids written as text; "<2>" is EOS (the model's eos_token_id), already at each answer's end.
    vocab = {f"<{i}>": i for i in range(model.config.vocab_size)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<0>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<2>", pad_token="<0>")
    g = torch.Generator().manual_seed(9)
    words = lambda n: " ".join(f"<{int(i)}>" for i in torch.randint(3, 512, (n,), generator=g))
    rows = [{"prompt": words(p), "chosen": " " + words(c) + " <2>", "rejected": " " + words(r) + " <2>"}
            for p, c, r in [(5, 4, 6), (3, 7, 2), (8, 3, 5)]]
    out = DATA / "trl_dpo"
    out.mkdir(exist_ok=True)
    tensors, losses = {}, {}
    for loss_type in ["sigmoid", "hinge", "ipo", "robust"]:
        model, ref = fresh_models()
        args = DPOConfig(output_dir=str(out / "tmp"), beta=0.2, loss_type=[loss_type],
                         label_smoothing=0.1 if loss_type == "robust" else 0.0,
                         per_device_train_batch_size=3, report_to=[], use_cpu=True,
                         precompute_ref_log_probs=False)
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, processing_class=tok,
                             train_dataset=Dataset.from_list(rows))
        examples = [trainer.train_dataset[i] for i in range(len(rows))]
        batch = trainer.data_collator(examples)
        model.zero_grad()
        model.train()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        losses[loss_type] = loss.item()
        if loss_type in ("sigmoid", "ipo"):
            for name, p in model.named_parameters():
                tensors[f"grad.{loss_type}.{name}"] = p.grad.detach().clone().contiguous()
        m = trainer._metrics["train"]
        losses[f"{loss_type}.reward_accuracy"] = m["rewards/accuracies"][-1]
        losses[f"{loss_type}.reward_margin"] = m["rewards/margins"][-1]
    with torch.no_grad():
        ref_logps = trainer.compute_ref_log_probs(ref, batch)
    shutil.rmtree(out / "tmp", ignore_errors=True)
    pairs = [{"prompt_ids": e["prompt_ids"], "chosen_ids": e["chosen_ids"],
              "rejected_ids": e["rejected_ids"]} for e in examples]
    tensors["ref_chosen_logps"] = ref_logps[0].detach().contiguous()
    tensors["ref_rejected_logps"] = ref_logps[1].detach().contiguous()
    save_file(tensors, out / "golden.safetensors")
    (out / "golden.json").write_text(json.dumps({
        "beta": 0.2, "label_smoothing_robust": 0.1, "pairs": pairs, "losses": losses,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__}, "base": "../shared/golden/hf/gqa/model"},
        indent=1) + "\n")
    print(f"wrote {out}: losses {losses}")


def check_adapter(adapter_dir, base_dir):
    """PEFT's logits for an adapter we wrote: loads it as any PEFT user would."""
    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    ids = torch.tensor(json.loads(Path(adapter_dir, "ids.json").read_text()))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    print(json.dumps({"peft_type": str(model.peft_config["default"].peft_type),
                      "logits": logits[:, -ids.shape[1]:].reshape(-1).tolist()}))


def main():
    args = sys.argv[1:]
    if args and args[0] == "--check-adapter":
        check_adapter(args[1], args[2])
        return
    base_dir = args[0] if args else str(ROOT.parent / "shared/golden/hf/gqa/model")
    cfg = json.loads(Path(base_dir, "config.json").read_text())
    ids, mask = inputs(cfg["vocab_size"])
    dora(base_dir, ids, mask)
    prompt(base_dir, ids, mask)
    prefix(base_dir, ids, mask)
    dpo(base_dir)


if __name__ == "__main__":
    main()
