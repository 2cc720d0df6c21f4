//! Ctrl-C and SIGTERM: set a flag that every wait loop checks, so a run ends cleanly
//! (children killed, instances deleted, records written) instead of dying mid-write.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Install the handler once, at start-up. A second Ctrl-C while pikaci is cleaning up
/// exits at once.
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("pikaci: interrupted twice, exiting without cleanup");
            std::process::exit(crate::error::exit::INTERRUPTED);
        }
    });
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
