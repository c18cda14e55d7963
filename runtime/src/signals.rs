//! Graceful shutdown on SIGINT and SIGTERM.
//!
//! [`ShutdownSignal::install`] replaces the default action of both signals (terminate) with
//! a handler that only sets a flag; the engine polls [`ShutdownSignal::requested`] (or
//! waits with [`ShutdownSignal::wait_timeout`]) and then drains its rings, commits its
//! journal and closes its sockets. A second signal while shutting down is not special:
//! the flag is already set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// The process-wide shutdown request set by SIGINT / SIGTERM.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownSignal(());

impl ShutdownSignal {
    /// Installs the handler for SIGINT and SIGTERM (idempotent).
    ///
    /// # Errors
    ///
    /// The operating system's error if a handler cannot be installed.
    pub fn install() -> std::io::Result<Self> {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: `sigaction` is given a zeroed, then fully initialised, `sigaction`
            // struct whose handler is an `extern "C"` function that only performs an atomic
            // store (async-signal-safe); the old action pointer may be null.
            let rc = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Self(()))
    }

    /// True once SIGINT or SIGTERM arrived (or [`request`](Self::request) was called).
    pub fn requested(&self) -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    /// Asks for shutdown from code, as a signal would.
    pub fn request(&self) {
        REQUESTED.store(true, Ordering::SeqCst);
    }

    /// Waits up to `timeout` for a shutdown request; true if one came.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.requested() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep((deadline - now).min(Duration::from_millis(10)));
        }
        true
    }
}
