//! `llama3 train --num-gpus N` (N > 1): this command started again N times, one rank per GPU,
//! with the variables torchrun sets (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`), and watched: when one rank fails the others are ended and
//! the error names it; Ctrl-C reaches every rank (one process group), which stop at the same
//! step.

use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result};

/// Runs the N ranks to their end; the exit status is theirs (0, or 130 when stopped).
pub(super) fn run_local(n: usize) -> Result<i32> {
    let exe = std::env::current_exe().context("cannot find the llama3 executable")?;
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    // A free port for the rendezvous (rank 0 listens on it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("no free local port for the ranks' rendezvous")?
        .port();
    eprintln!("starting {n} ranks, one per GPU (rendezvous 127.0.0.1:{port})");
    let mut ranks: Vec<Child> = Vec::with_capacity(n);
    for r in 0..n {
        let child = Command::new(&exe)
            .args(&args)
            .env("RANK", r.to_string())
            .env("WORLD_SIZE", n.to_string())
            .env("LOCAL_RANK", r.to_string())
            .env("LOCAL_WORLD_SIZE", n.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn();
        match child {
            Ok(c) => ranks.push(c),
            Err(e) => {
                end(&mut ranks);
                return Err(e).context(format!("cannot start rank {r}"));
            }
        }
    }
    // Ctrl-C goes to the whole process group: the ranks stop at a step's end; this process
    // waits for them instead of dying first.
    #[cfg(unix)]
    // SAFETY: sets the disposition of one signal; no handler runs.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    let mut codes: Vec<Option<i32>> = vec![None; n];
    loop {
        for (r, child) in ranks.iter_mut().enumerate() {
            if codes[r].is_some() {
                continue;
            }
            let Some(status) = child.try_wait().context("waiting for the ranks")? else {
                continue;
            };
            let code = status.code().unwrap_or(128 + signal(&status));
            codes[r] = Some(code);
            if code != 0 && code != 130 {
                end(&mut ranks);
                anyhow::bail!(
                    "rank {r} of {n} failed ({status}); the other ranks were stopped (its \
                     error is above)"
                );
            }
        }
        if codes.iter().all(Option::is_some) {
            return Ok(codes.into_iter().flatten().max().unwrap_or(0));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn end(ranks: &mut [Child]) {
    for c in ranks.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[cfg(unix)]
fn signal(status: &std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.signal().unwrap_or(0)
}

#[cfg(not(unix))]
fn signal(_: &std::process::ExitStatus) -> i32 {
    0
}
