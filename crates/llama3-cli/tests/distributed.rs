//! Data-parallel training as users launch it (issue 20's acceptance 1): `mpirun -np 2` of a
//! build with the `mpi` feature gives the per-step losses and final weights of one process
//! with `--grad-accum 2`, for full training and for LoRA; killing a rank ends the job with an
//! error naming it within 60 s, and the run resumes under `mpirun -np 2` bit for bit.
//!
//! The MPI binary is `$LLAMA3_MPI_BIN` (scripts/test.sh builds it with `--features mpi` after
//! installing Open MPI); without it or `mpirun` these tests say they were skipped (under CI
//! they fail). The reference single process is this build's own `llama3`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use llama3_testutil::{
    assert_one_line_error, llama_spm_vocab, ok, skip_or_fail_on_ci, sotu_corpus,
    wait_for_checkpoint,
};

/// The MPI build and `mpirun`, or None (reported as skipped).
fn mpi(test: &str) -> Option<PathBuf> {
    let bin = std::env::var_os("LLAMA3_MPI_BIN").map(PathBuf::from);
    let Some(bin) = bin.filter(|b| b.exists()) else {
        skip_or_fail_on_ci(
            test,
            "LLAMA3_MPI_BIN does not name a llama3 built with --features mpi (scripts/test.sh \
             builds one after installing Open MPI)",
        );
        return None;
    };
    let found = Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        skip_or_fail_on_ci(test, "no mpirun on PATH (Debian: openmpi-bin)");
        return None;
    }
    Some(bin)
}

/// `llama3 train` flags shared by every run here: micro-batches of 4 blocks of 32 tokens.
fn flags(data: &str, out: &Path, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["train", "--data_path", data, "--seq-len", "32"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let steps = steps.to_string();
    v.extend(
        [
            "--batch-size",
            "4",
            "--max-steps",
            &steps,
            "--save-every",
            "5",
            "--eval-every",
            "10",
            "--warmup",
            "3",
            "--learning-rate",
            "3e-3",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    v.push("--model_path".into());
    v.push(out.to_string_lossy().into_owned());
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// One process of this build.
fn single(args: &[String]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llama3"));
    c.args(args);
    c
}

/// `mpirun -np 2` of the MPI build.
fn mpirun(bin: &Path, args: &[String]) -> Command {
    let mut c = Command::new("mpirun");
    // Root in containers (CI) is refused unless confirmed; two ranks on two cores.
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-np", "2"])
        .arg(bin)
        .args(args);
    c
}

fn run(mut c: Command) -> Output {
    let out = c.output().expect("run");
    ok(&out);
    out
}

/// The `metrics.jsonl` records without their timing fields.
fn records(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("tokens_per_s");
            o.remove("comm_s");
            o.remove("wait_s");
            v
        })
        .collect()
}

/// Same records, losses within `rel`; other fields equal.
fn assert_same_losses(a: &Path, b: &Path, rel: f64) {
    let (ra, rb) = (records(a), records(b));
    assert_eq!(ra.len(), rb.len(), "record counts differ");
    for (x, y) in ra.iter().zip(&rb) {
        for (k, vx) in x.as_object().unwrap() {
            let vy = &y[k];
            match (vx.as_f64(), vy.as_f64()) {
                (Some(p), Some(q)) if ["loss", "ppl", "grad_norm"].contains(&k.as_str()) => {
                    assert!((p - q).abs() <= rel * p.abs().max(1e-12), "{k}: {x} vs {y}")
                }
                _ => assert_eq!(vx, vy, "{k}: {x} vs {y}"),
            }
        }
    }
}

/// Every tensor of two safetensors files within `tol` (absolute).
fn assert_same_weights(a: &Path, b: &Path, tol: f32) {
    let (ta, tb) = (llama3_testutil::tensors(a), llama3_testutil::tensors(b));
    assert_eq!(ta.len(), tb.len());
    for (name, x) in &ta {
        let d = llama3_testutil::max_abs_diff(
            &llama3_testutil::to_vec(x),
            &llama3_testutil::to_vec(&tb[name]),
        );
        assert!(d <= tol, "{name}: max |diff| {d}");
    }
}

#[test]
fn two_ranks_equal_one_process_accumulating_two_micro_batches() {
    let Some(bin) = mpi("two_ranks_equal_one_process_accumulating_two_micro_batches") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = sotu_corpus(dir.path(), 3);
    let tok = llama_spm_vocab();
    let full = ["--init", "tiny", "--tokenizer", &tok];
    // Full training of the tiny preset, 20 steps.
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let accum: Vec<&str> = full.iter().copied().chain(["--grad-accum", "2"]).collect();
    run(single(&flags(&data, &one, 20, &accum)));
    let out = run(mpirun(&bin, &flags(&data, &two, 20, &full)));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("x 2 ranks (mpi"), "{said}");
    assert_same_losses(&one, &two, 1e-5);
    assert_same_weights(
        &one.join("model.safetensors"),
        &two.join("model.safetensors"),
        1e-5,
    );
    assert_eq!(records(&two).len(), 20 + 3, "20 steps, 3 evaluations");

    // The single process's run continued on 2 ranks (its global batch of 2 micro-batches
    // kept): said, and it goes on.
    let mut more = flags(&data, &one, 30, &full);
    more.push("--resume".into());
    let out = run(mpirun(&bin, &more));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("resuming a run of 1 rank(s) on 2"), "{said}");
    assert_eq!(records(&one).len(), 30 + 4, "30 steps, 4 evaluations");

    // LoRA (with dropout: masks follow the global micro-batch index) on the model just
    // trained.
    let base = two.to_string_lossy().into_owned();
    let lora = ["--init", &base, "--method", "lora", "--lora-dropout", "0.1"];
    let (l1, l2) = (dir.path().join("l1"), dir.path().join("l2"));
    let accum: Vec<&str> = lora.iter().copied().chain(["--grad-accum", "2"]).collect();
    run(single(&flags(&data, &l1, 20, &accum)));
    run(mpirun(&bin, &flags(&data, &l2, 20, &lora)));
    assert_same_losses(&l1, &l2, 1e-5);
    assert_same_weights(
        &l1.join("adapter_model.safetensors"),
        &l2.join("adapter_model.safetensors"),
        1e-5,
    );
}

/// The pid of rank `rank` of the job writing into `run` (from /proc).
fn rank_pid(run: &Path, rank: usize) -> Option<u32> {
    let run = run.to_string_lossy().into_owned();
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let has = |hay: &[u8], s: &str| hay.split(|&b| b == 0).any(|w| w == s.as_bytes());
        if has(&cmd, &run) && has(&env, &want) && !has(&cmd, "mpirun") {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_killed_rank_ends_the_job_and_the_run_resumes_exactly() {
    let Some(bin) = mpi("a_killed_rank_ends_the_job_and_the_run_resumes_exactly") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = sotu_corpus(dir.path(), 3);
    let tok = llama_spm_vocab();
    let init = ["--init", "tiny", "--tokenizer", &tok];
    let straight = dir.path().join("straight");
    run(mpirun(&bin, &flags(&data, &straight, 60, &init)));

    // The same job; rank 1 killed (SIGKILL) once a checkpoint past step 10 exists.
    let killed = dir.path().join("killed");
    let mut job = mpirun(&bin, &flags(&data, &killed, 60, &init))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&killed, 10, &mut job);
    let pid = rank_pid(&killed, 1).expect("rank 1's process");
    let t0 = Instant::now();
    // SAFETY: sends a signal to a process of this test.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let out = loop {
        if job.try_wait().unwrap().is_some() {
            break job.wait_with_output().unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the job outlived its rank by 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("rank 1"),
        "the error does not name the rank: {said}"
    );
    assert!(
        !killed.join("model.safetensors").exists(),
        "the run had finished"
    );

    // Resumed with a global batch of another size: refused before any work.
    let mut other = flags(&data, &killed, 60, &init);
    other.extend(["--grad-accum", "2", "--resume"].map(String::from));
    let out = mpirun(&bin, &other).output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("resume with --grad-accum 1"), "{said}");

    // Resumed under mpirun -np 2: the straight run's records and weights, bit for bit.
    let mut resume = flags(&data, &killed, 60, &init);
    resume.push("--resume".into());
    run(mpirun(&bin, &resume));
    assert_eq!(records(&straight), records(&killed), "the records differ");
    let wa = std::fs::read(straight.join("model.safetensors")).unwrap();
    let wb = std::fs::read(killed.join("model.safetensors")).unwrap();
    assert!(wa == wb, "final weights differ");
}

/// A rank of a job started without the backend's feature: a one-line error naming it, in
/// every build (no MPI needed: the launcher's variables are enough).
#[test]
fn more_ranks_than_the_build_supports_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = sotu_corpus(dir.path(), 3);
    let tok = llama_spm_vocab();
    let init = ["--init", "tiny", "--tokenizer", &tok];
    let args = flags(&data, &dir.path().join("o"), 2, &init);
    if cfg!(feature = "mpi") {
        return; // this build has it: the job would wait for its second rank
    }
    let out = single(&args)
        .env("OMPI_COMM_WORLD_RANK", "0")
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert_one_line_error(&out, "built without the `mpi` cargo feature");
    let out = single(&args)
        .env("RANK", "1")
        .env("WORLD_SIZE", "x")
        .output()
        .unwrap();
    assert_one_line_error(&out, "WORLD_SIZE=\"x\" is not a number");
}

/// The sequence classifier's loop too: LoRA adapters and the head on the default model, each
/// rank taking its share of every batch, give one process's weights.
#[test]
fn classifier_two_ranks_equal_one_process() {
    let Some(bin) = mpi("classifier_two_ranks_equal_one_process") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("train.jsonl");
    let rows: Vec<String> = [
        ("A warm, funny and moving film.", "fresh"),
        ("An absolute delight from start to finish.", "fresh"),
        ("Brilliant performances and a gripping story.", "fresh"),
        ("A joyous triumph that I loved.", "fresh"),
        ("A dull, lifeless mess that drags on forever.", "rotten"),
        ("Terrible acting and a boring, stupid plot.", "rotten"),
        ("Badly shot and poorly acted.", "rotten"),
        ("A tedious failure that I hated.", "rotten"),
    ]
    .iter()
    .map(|(t, l)| serde_json::json!({"text": t, "label": l}).to_string())
    .collect();
    std::fs::write(&data, rows.join("\n")).unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "classify",
            "train",
            "--data",
            data.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--method",
            "lora",
            "--epochs",
            "2",
            "--lora-r",
            "4",
            "--batch-size",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    run(single(&args(&one)));
    let out = run(mpirun(&bin, &args(&two)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 ranks (mpi)"));
    assert_same_weights(
        &one.join("model.safetensors"),
        &two.join("model.safetensors"),
        1e-5,
    );
}

/// A rank that hangs (stopped, where no launcher notices) ends the job within the collective
/// deadline: the waiting rank says what it waited in and exits, never a hang.
#[test]
fn a_hung_rank_ends_the_job_at_the_deadline() {
    let Some(bin) = mpi("a_hung_rank_ends_the_job_at_the_deadline") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = sotu_corpus(dir.path(), 3);
    let tok = llama_spm_vocab();
    let init = ["--init", "tiny", "--tokenizer", &tok, "--dist-timeout", "3"];
    let run_dir = dir.path().join("hung");
    let mut job = mpirun(&bin, &flags(&data, &run_dir, 100_000, &init))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&run_dir, 1, &mut job);
    let pid = rank_pid(&run_dir, 1).expect("rank 1's process");
    let t0 = Instant::now();
    // SAFETY: stops a process of this test (mpirun kills it when the job ends).
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let out = loop {
        if job.try_wait().unwrap().is_some() {
            break job.wait_with_output().unwrap();
        }
        if t0.elapsed() > Duration::from_secs(60) {
            // SAFETY: as above; the test fails below either way.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("the job outlived its hung rank by 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("rank 0 of 2") && said.contains("has waited"),
        "{said}"
    );
}
