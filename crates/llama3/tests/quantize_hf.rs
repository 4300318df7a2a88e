//! HF directories to GGUF with a tokenizer: the Llama 3.2 tokenizer must export as llama.cpp's
//! own converter wrote Llama 3's (../shared/data/llama-vocab-gguf/ggml-vocab-llama-bpe.gguf),
//! and the default model written out as an HF directory must convert back to its own weights,
//! hyperparameters and tokenizer.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use llama3::config::LlamaConfig;
use llama3::loader::{load, LoadOptions};
use llama3::quantize::{quantize, QuantType, QuantizeOptions};
use llama3::tokenizer::{gguf_metadata_from_hf_dir, Tokenizer};
use llama3::weights::gguf::{GgufFile, GgufSource};
use llama3::weights::names::gguf_to_hf;
use llama3::weights::WeightSource;
use llama3_testutil::{gguf_header, golden, ids, llama3_home, shared};
use serde_json::{json, Value as Json};

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(|s| s.to_string().unwrap().clone()).collect(),
        v => panic!("not an array: {v:?}"),
    }
}

fn ints(v: &Value) -> Vec<i64> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::I32(i) => *i as i64,
                Value::U32(i) => *i as i64,
                x => panic!("{x:?}"),
            })
            .collect(),
        v => panic!("not an array: {v:?}"),
    }
}

#[test]
fn llama32_tokenizer_exports_like_llama_cpp() {
    let dir = llama3_home().join("llama3.2-tokenizer");
    // This is the Llama 3.2 Vision tokenizer: tokenizer_config.json adds <|image|> at 128256.
    let md: HashMap<String, Value> = gguf_metadata_from_hf_dir(&dir, 128257)
        .unwrap()
        .into_iter()
        .collect();
    let err = gguf_metadata_from_hf_dir(&dir, 128256)
        .unwrap_err()
        .to_string();
    assert!(err.contains("<|image|>") && err.contains("128256"), "{err}");
    let reference = gguf_header(&shared().join("data/llama-vocab-gguf/ggml-vocab-llama-bpe.gguf"));
    let r = &reference.metadata;
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.pre"] {
        assert_eq!(
            md[key].to_string().unwrap(),
            r[key].to_string().unwrap(),
            "{key}"
        );
    }
    // Llama 3.2 renamed some reserved special tokens of Llama 3; the 128000 others are equal.
    let (got, want) = (
        strings(&md["tokenizer.ggml.tokens"]),
        strings(&r["tokenizer.ggml.tokens"]),
    );
    assert_eq!((got.len(), got[128256].as_str()), (128257, "<|image|>"));
    assert!(got[..128000] == want[..128000], "normal tokens differ");
    let types = ints(&md["tokenizer.ggml.token_type"]);
    assert_eq!(types[..128256], ints(&r["tokenizer.ggml.token_type"]));
    assert_eq!(types[128256], 3, "<|image|> is special: control");
    assert!(
        strings(&md["tokenizer.ggml.merges"]) == strings(&r["tokenizer.ggml.merges"]),
        "merges differ"
    );
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        assert_eq!(format!("{:?}", md[key]), format!("{:?}", r[key]), "{key}");
    }
    assert_eq!(
        format!("{:?}", md["tokenizer.ggml.eot_token_id"]),
        "U32(128009)"
    );

    // Rebuilt from the metadata, it tokenizes as HF tokenizers does (golden/tokenizer).
    let tok = Tokenizer::from_gguf(&md).unwrap();
    let g: Json =
        serde_json::from_slice(&std::fs::read(golden("tokenizer/llama3.2.json")).unwrap()).unwrap();
    for s in g["samples"].as_array().unwrap() {
        let text = s["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false, true).unwrap(),
            ids(&s["ids"]),
            "{text:?}"
        );
        assert_eq!(
            tok.encode(text, true, true).unwrap(),
            ids(&s["ids_with_special"]),
            "{text:?}"
        );
    }
}

/// The default model as an HF directory: f32 safetensors under HF names (Q/K rows in HF's
/// layout, tied head), config.json, tokenizer.json and tokenizer_config.json as SmolLM2's.
fn default_model_as_hf_dir(dir: &Path) -> Content {
    let src_path = llama3_testutil::default_model();
    let original = gguf_header(&src_path);
    let file = GgufFile::open(&src_path).unwrap();
    let md = file.metadata().clone();
    let cfg = LlamaConfig::from_gguf(&md).unwrap();
    let names: Vec<(String, Vec<usize>)> = file
        .content
        .tensor_infos
        .iter()
        .map(|(n, i)| (gguf_to_hf(n).unwrap(), i.shape.dims().to_vec()))
        .collect();
    let src = GgufSource::new(
        file,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        DType::F32,
        &Device::Cpu,
    );
    let weights: HashMap<String, Tensor> = names
        .into_iter()
        .map(|(n, dims)| {
            let t = src.get(&n, &dims).unwrap().to_dense().unwrap();
            (n, t)
        })
        .collect();
    candle_core::safetensors::save(&weights, dir.join("model.safetensors")).unwrap();
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let tok = Tokenizer::from_gguf(&md).unwrap();
    tok.inner().save(dir.join("tokenizer.json"), false).unwrap();
    // SmolLM2-135M-Instruct's tokenizer_config.json names these.
    let tc = json!({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
        "pad_token": "<|im_end|>", "add_bos_token": false,
        "chat_template": tok.chat_template().unwrap().source(),
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
    original
}

#[test]
fn default_model_as_hf_dir_converts_back_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let hf = tmp.path().join("SmolLM2-135M-Instruct");
    std::fs::create_dir(&hf).unwrap();
    let original = default_model_as_hf_dir(&hf);
    let out = tmp.path().join("smol-f32.gguf");
    let report = quantize(&hf, &out, &QuantizeOptions::new(QuantType::F32)).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let conv = gguf_header(&out);

    // Same tensors, values exactly the dequantized originals: Q/K rows permuted back into
    // GGUF's layout, no output.weight for the tied head.
    let src = llama3_testutil::default_model();
    let (mut fa, mut fb) = (
        std::fs::File::open(&src).unwrap(),
        std::fs::File::open(&out).unwrap(),
    );
    let mut names: Vec<&String> = original.tensor_infos.keys().collect();
    names.sort();
    let conv_names: Vec<&String> = {
        let mut v: Vec<&String> = conv.tensor_infos.keys().collect();
        v.sort();
        v
    };
    assert_eq!(names, conv_names);
    for name in names {
        let a = original.tensor(&mut fa, name, &Device::Cpu).unwrap();
        let b = conv.tensor(&mut fb, name, &Device::Cpu).unwrap();
        let (a, b) = (
            a.dequantize(&Device::Cpu).unwrap(),
            b.dequantize(&Device::Cpu).unwrap(),
        );
        assert_eq!(a.dims(), b.dims(), "{name}");
        let d: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0, "{name}");
    }

    // Hyperparameters and tokenizer keys as llama.cpp wrote them.
    let (a, b) = (&original.metadata, &conv.metadata);
    let mut missing = Vec::new();
    for (k, v) in a {
        let same_kind = k.starts_with("llama.") || k.starts_with("tokenizer.");
        match b.get(k) {
            Some(w) if same_kind => assert_eq!(format!("{w:?}"), format!("{v:?}"), "{k}"),
            None if same_kind => missing.push(k.as_str()),
            _ => {}
        }
    }
    // SentencePiece-only key, irrelevant to a gpt2 tokenizer.
    assert_eq!(missing, ["tokenizer.ggml.add_space_prefix"]);

    // And it runs: golden prompt ids, " Paris" after p1.
    let l = load(&out, &LoadOptions::default()).unwrap();
    let tok = l.tokenizer.as_ref().unwrap();
    let text = std::fs::read_to_string(golden("llamacpp/golden.json")).unwrap();
    let g: Json = serde_json::from_str(&text).unwrap();
    for p in g["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let prompt =
            std::fs::read_to_string(golden(&format!("llamacpp/prompts/{name}.txt"))).unwrap();
        assert_eq!(
            tok.encode(&prompt, true, true).unwrap(),
            ids(&p["prompt_ids"]),
            "{name}"
        );
    }
    let p1 = ids(&g["prompts"][0]["prompt_ids"]);
    let x = Tensor::new(p1.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits: Vec<f32> = l
        .model
        .forward(&x, None, llama3::model::Logits::Last)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
    assert_eq!(best, 7042);
}
