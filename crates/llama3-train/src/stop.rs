//! A process-wide request to stop training at the next safe point: the training loop checks
//! it between optimizer steps, writes a resumable checkpoint and returns a summary marked
//! `interrupted`. Process-wide because its senders are signal handlers (the CLI's SIGINT)
//! and other threads (the Python binding when it sees KeyboardInterrupt), which cannot reach
//! a value owned by a running loop. Setting it is async-signal-safe (one atomic store).

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

/// Asks the running (or the next) training loop to stop after its current step.
pub fn request_stop() {
    STOP.store(true, Ordering::SeqCst);
}

/// Whether a stop has been asked for and not cleared.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Forgets an earlier request; a caller starting a run calls it first, so that a stop aimed
/// at an earlier run does not end this one.
pub fn clear_stop() {
    STOP.store(false, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_then_clear() {
        clear_stop();
        assert!(!stop_requested());
        request_stop();
        assert!(stop_requested());
        clear_stop();
        assert!(!stop_requested());
    }
}
