//! SIGTERM sets the shutdown flag instead of killing the process.

use std::time::Duration;

use peregrine::signals::ShutdownSignal;

#[test]
fn sigterm_requests_a_graceful_shutdown() {
    let signal = ShutdownSignal::install().unwrap();
    assert!(!signal.requested());
    assert!(!signal.wait_timeout(Duration::from_millis(5)));
    // SAFETY: raising a signal whose handler was installed above.
    let rc = unsafe { libc::raise(libc::SIGTERM) };
    assert_eq!(rc, 0);
    assert!(
        signal.wait_timeout(Duration::from_secs(5)),
        "the handler set the flag"
    );
}
