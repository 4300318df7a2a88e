//! Ctrl-C during `llama3 train`. While the loop runs (armed), the first SIGINT asks it to stop
//! at the next step's end (`llama3_train::request_stop`: a checkpoint, then a clean return);
//! before that (loading, tokenizing: nothing to save) and on a second Ctrl-C the process quits
//! at once with status 130, as without a handler. The handler only does async-signal-safe
//! things: atomic loads and stores, write(2), _exit(2).
//!
//! SIGUSR1 asks for the same stop, never quits: it is the signal launchers forward to every
//! rank (`kill -USR1 <mpirun's pid>`; mpirun itself ends the job on Ctrl-C).

use std::sync::atomic::{AtomicBool, Ordering};

static ARMED: AtomicBool = AtomicBool::new(false);

const SAY: &[u8] =
    b"\nCtrl-C: stopping after this step to write a checkpoint (Ctrl-C again quits now)\n";

extern "C" fn on_sigint(_: libc::c_int) {
    if ARMED.load(Ordering::SeqCst) && !llama3_train::stop_requested() {
        llama3_train::request_stop();
        // SAFETY: write(2) on stderr with a static buffer is async-signal-safe.
        unsafe { libc::write(2, SAY.as_ptr().cast(), SAY.len()) };
    } else {
        // SAFETY: _exit(2) is async-signal-safe; 130 = 128 + SIGINT, the shell's convention.
        unsafe { libc::_exit(130) };
    }
}

const SAY_USR1: &[u8] = b"\nSIGUSR1: stopping after this step to write a checkpoint\n";

extern "C" fn on_sigusr1(_: libc::c_int) {
    if !llama3_train::stop_requested() {
        llama3_train::request_stop();
        // SAFETY: as above.
        unsafe { libc::write(2, SAY_USR1.as_ptr().cast(), SAY_USR1.len()) };
    }
}

/// From now on a Ctrl-C stops the loop at a safe point.
pub(super) fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// The handler, installed until dropped; then the previous one (a Python host's) is back.
pub(super) struct Handler {
    previous: libc::sigaction,
    previous_usr1: libc::sigaction,
}

impl Handler {
    pub(super) fn install() -> anyhow::Result<Self> {
        ARMED.store(false, Ordering::SeqCst);
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); SA_RESTART keeps the
        // file and terminal I/O of the run going through the signal.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGINT, &action, &mut previous) != 0 {
                anyhow::bail!(
                    "cannot install the Ctrl-C handler: {}",
                    std::io::Error::last_os_error()
                );
            }
            action.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
            let mut previous_usr1: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGUSR1, &action, &mut previous_usr1) != 0 {
                libc::sigaction(libc::SIGINT, &previous, std::ptr::null_mut());
                anyhow::bail!(
                    "cannot install the SIGUSR1 handler: {}",
                    std::io::Error::last_os_error()
                );
            }
            Ok(Self {
                previous,
                previous_usr1,
            })
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        ARMED.store(false, Ordering::SeqCst);
        // SAFETY: restores the action saved by `install`.
        unsafe {
            libc::sigaction(libc::SIGINT, &self.previous, std::ptr::null_mut());
            libc::sigaction(libc::SIGUSR1, &self.previous_usr1, std::ptr::null_mut());
        }
    }
}
