//! One DPO step against TRL's `DPOTrainer` (`scripts/make_peft_goldens.py`, the tiny GQA model
//! trained in full, beta 0.2, three pairs TRL tokenized, a reference 2% off the model whose
//! log-probabilities TRL computed): the loss of each loss_type (sigmoid, hinge, ipo, robust),
//! the rewards' accuracy and margin, and for sigmoid and ipo the gradient of every weight,
//! all within 1e-5.

use candle_core::DType;
use llama3::loader::{load, LoadOptions};
use llama3_testutil::{golden, tensors, to_vec};
use llama3_train::batches::Dataset;
use llama3_train::dpo::{self, DpoLoss, DpoSettings, Pair, Pairs};
use serde_json::Value;

const TOL: f32 = 1e-5;

#[test]
fn one_dpo_step_equals_trl() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../llama3/tests/data/trl_dpo");
    let g = tensors(&dir.join("golden.safetensors"));
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("golden.json")).unwrap()).unwrap();
    let ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let pairs: Vec<Pair> = meta["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Pair {
            prompt: ids(&p["prompt_ids"]),
            chosen: ids(&p["chosen_ids"]),
            rejected: ids(&p["rejected_ids"]),
        })
        .collect();
    let n = pairs.len();
    let data = Pairs {
        pairs,
        pad: 0,
        max_len: 1024,
    };
    let reference: Vec<f64> = [
        to_vec(&g["ref_chosen_logps"]),
        to_vec(&g["ref_rejected_logps"]),
    ]
    .concat()
    .iter()
    .map(|&x| x as f64)
    .collect();
    let beta = meta["beta"].as_f64().unwrap();
    let trl = &meta["losses"];
    for (name, loss) in [
        ("sigmoid", DpoLoss::Sigmoid),
        ("hinge", DpoLoss::Hinge),
        ("ipo", DpoLoss::Ipo),
        ("robust", DpoLoss::Robust),
    ] {
        let mut model = load(&golden("hf/gqa/model"), &LoadOptions::default())
            .unwrap()
            .model;
        let params = model.trainable_params().unwrap();
        let (x, labels) = data
            .batch(&(0..n).collect::<Vec<_>>(), model.device())
            .unwrap();
        let (logps, counts) = dpo::row_logps(&model, &x, &labels).unwrap();
        let s = DpoSettings {
            beta,
            loss,
            label_smoothing: match loss {
                DpoLoss::Robust => meta["label_smoothing_robust"].as_f64().unwrap(),
                _ => 0.0,
            },
        };
        let (sum, sums) = dpo::pair_loss_sum(&logps, &reference, &counts, &s).unwrap();
        let mean = (sum / n as f64).unwrap();
        let got = mean
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let want = trl[name].as_f64().unwrap() as f32;
        eprintln!("{name}: loss {got:.7} TRL {want:.7}");
        assert!(
            (got - want).abs() <= TOL,
            "{name}: loss {got} against TRL's {want}"
        );
        let r = sums.rewards();
        let acc = trl[format!("{name}.reward_accuracy")].as_f64().unwrap();
        let margin = trl[format!("{name}.reward_margin")].as_f64().unwrap();
        assert!(
            (r.accuracy - acc).abs() < 1e-6,
            "{name}: reward accuracy {}",
            r.accuracy
        );
        assert!(
            (r.margin - margin).abs() < 1e-5,
            "{name}: margin {} against {margin}",
            r.margin
        );
        if !matches!(loss, DpoLoss::Sigmoid | DpoLoss::Ipo) {
            continue;
        }
        let grads = mean.backward().unwrap();
        let mut worst = (0f32, String::new());
        for (pname, var) in &params {
            let want = to_vec(&g[&format!("grad.{name}.{pname}")]);
            let got = to_vec(grads.get(var).unwrap());
            let d = llama3_testutil::max_abs_diff(&got, &want);
            if d > worst.0 {
                worst = (d, pname.clone());
            }
        }
        eprintln!("{name}: gradients max |diff| {:.2e} ({})", worst.0, worst.1);
        assert!(
            worst.0 <= TOL,
            "{name}: gradient of {} differs by {}",
            worst.1,
            worst.0
        );
    }
}
