//! `llama3 prune` on the default model (issue 21): depth, MLP-width and head pruning give smaller
//! ordinary Llamas that load and generate, Wanda gives the asked sparsity per row and 2:4 its
//! pattern, the held-out perplexity is printed before and after, and bad input is a one-line
//! error before any work.

use std::path::Path;

use llama3_testutil::{
    assert_one_line_error, default_model, ok, read_json, shared, tensors, to_vec,
};

macro_rules! llama3 {
    ($args:expr) => {
        std::process::Command::new(env!("CARGO_BIN_EXE_llama3"))
            .args($args)
            .output()
            .expect("run llama3")
    };
}

fn calib() -> String {
    let p = shared().join("data/sotu/data/1790_george_washington_n.txt");
    p.to_string_lossy().into_owned()
}

fn prune(out: &Path, extra: &[&str]) -> String {
    let model = default_model();
    let m = model.to_str().unwrap();
    let c = calib();
    let mut args = vec![
        "prune",
        "-m",
        m,
        "--calib",
        &c,
        "-o",
        out.to_str().unwrap(),
        "--calib-tokens",
        "512",
        "--seq-len",
        "256",
    ];
    args.extend_from_slice(extra);
    let o = llama3!(&args);
    ok(&o);
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn depth_and_width_pruning_give_smaller_llamas_that_run() {
    let dir = tempfile::tempdir().unwrap();
    let c = calib();
    // Depth: 4 of 30 layers, with the held-out perplexity before and after.
    let depth = dir.path().join("depth");
    let said = prune(&depth, &["--drop-layers", "4", "--eval", &c]);
    assert!(said.contains("dropped layers (block influence)"), "{said}");
    assert!(said.contains("held-out perplexity:"), "{said}");
    assert!(
        said.contains("calibration: 2 blocks of 256 tokens"),
        "{said}"
    );
    let cfg = read_json(&depth.join("config.json"));
    assert_eq!(cfg["num_hidden_layers"], 26);
    let w = tensors(&depth.join("model.safetensors"));
    assert!(w.contains_key("model.layers.25.mlp.down_proj.weight"));
    assert!(!w.contains_key("model.layers.26.mlp.down_proj.weight"));
    let gen = llama3!(&[
        "generate",
        "-m",
        depth.to_str().unwrap(),
        "-p",
        "Fellow citizens",
        "-n",
        "4"
    ]);
    ok(&gen);

    // Width: 75% of the MLP channels (1536 -> 1152) in every layer.
    let width = dir.path().join("width");
    let said = prune(&width, &["--ffn-keep", "0.75"]);
    assert!(said.contains("MLP channels: 1152 of 1536"), "{said}");
    let cfg = read_json(&width.join("config.json"));
    assert_eq!(cfg["intermediate_size"], 1152);
    let w = tensors(&width.join("model.safetensors"));
    assert_eq!(w["model.layers.0.mlp.gate_proj.weight"].dims(), [1152, 576]);
    assert_eq!(w["model.layers.0.mlp.down_proj.weight"].dims(), [576, 1152]);
    ok(&llama3!(&[
        "generate",
        "-m",
        width.to_str().unwrap(),
        "-p",
        "Fellow citizens",
        "-n",
        "4"
    ]));

    // Heads: 2 of the 3 KV groups (6 of 9 query heads), whole groups of the original weights.
    let heads = dir.path().join("heads");
    let said = prune(&heads, &["--heads-keep", "0.67", "--eval", &c]);
    assert!(
        said.contains("attention heads: 6 of 9 kept in each layer (2 of 3 KV groups)"),
        "{said}"
    );
    let cfg = read_json(&heads.join("config.json"));
    assert_eq!(
        (
            &cfg["num_attention_heads"],
            &cfg["num_key_value_heads"],
            &cfg["head_dim"]
        ),
        (&6.into(), &2.into(), &64.into())
    );
    let w = tensors(&heads.join("model.safetensors"));
    let dims = |n: &str| {
        w[&format!("model.layers.4.self_attn.{n}.weight")]
            .dims()
            .to_vec()
    };
    assert_eq!(
        [
            dims("q_proj"),
            dims("k_proj"),
            dims("v_proj"),
            dims("o_proj")
        ],
        [
            vec![384, 576],
            vec![128, 576],
            vec![128, 576],
            vec![576, 384]
        ]
    );
    // Each kept KV head is one of the original's, whole (its 64 rows of k_proj).
    let same = dir.path().join("same");
    prune(&same, &["--drop-layers", "0"]);
    let base = tensors(&same.join("model.safetensors"));
    let k0 = to_vec(&base["model.layers.4.self_attn.k_proj.weight"]);
    let k = to_vec(&w["model.layers.4.self_attn.k_proj.weight"]);
    let originals: Vec<&[f32]> = k0.chunks(64 * 576).collect();
    assert!(k.chunks(64 * 576).all(|head| originals.contains(&head)));
    ok(&llama3!(&[
        "generate",
        "-m",
        heads.to_str().unwrap(),
        "-p",
        "Fellow citizens",
        "-n",
        "4"
    ]));
}

#[test]
fn wanda_zeroes_each_row_and_two_of_four() {
    let dir = tempfile::tempdir().unwrap();
    let half = dir.path().join("half");
    let said = prune(&half, &["--sparsity", "0.5"]);
    assert!(said.contains("Wanda 50%: 50.0%"), "{said}");
    let w = tensors(&half.join("model.safetensors"));
    let q = to_vec(&w["model.layers.3.self_attn.q_proj.weight"]);
    for row in q.chunks(576) {
        assert_eq!(row.iter().filter(|v| **v == 0.0).count(), 288);
    }
    let nm = dir.path().join("nm");
    prune(&nm, &["--pattern", "2:4"]);
    let w = tensors(&nm.join("model.safetensors"));
    let down = to_vec(&w["model.layers.7.mlp.down_proj.weight"]);
    for group in down.chunks(4) {
        assert!(group.iter().filter(|v| **v == 0.0).count() >= 2);
    }
    // The embedding and norms are untouched: those of the model written unpruned.
    let same = dir.path().join("same");
    prune(&same, &["--drop-layers", "0"]);
    let base = tensors(&same.join("model.safetensors"));
    for name in [
        "model.embed_tokens.weight",
        "model.layers.7.input_layernorm.weight",
    ] {
        assert_eq!(to_vec(&w[name]), to_vec(&base[name]), "{name}");
    }
    assert_ne!(
        to_vec(&w["model.layers.7.mlp.down_proj.weight"]),
        to_vec(&base["model.layers.7.mlp.down_proj.weight"])
    );
}

#[test]
fn bad_input_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = default_model();
    let m = model.to_str().unwrap();
    let c = calib();
    let out = dir.path().join("o");
    let o = out.to_str().unwrap();
    let base = ["prune", "-m", m, "--calib", &c, "-o", o];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        llama3!(&a)
    };
    assert_one_line_error(&run(&["--sparsity", "1"]), "must be in [0, 1)");
    assert_one_line_error(&run(&["--drop-layers", "30"]), "at least one must stay");
    assert_one_line_error(&run(&[]), "nothing to do");
    assert_one_line_error(&run(&["--pattern", "4:2"]), "expected N:M");
    assert_one_line_error(&run(&["--ffn-keep", "0"]), "must be in (0, 1]");
    assert_one_line_error(
        &run(&["--drop-layers", "2", "--sparsity", "0.5"]),
        "take separate runs",
    );
    assert!(!out.exists(), "nothing written");
}
