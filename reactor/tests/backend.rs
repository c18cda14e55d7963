//! Backend selection: forcing mio, the environment override, and the fallback when
//! io_uring cannot be set up.

mod common;

use common::*;
use peregrine_reactor::{BackendChoice, BackendKind, Reactor, BACKEND_ENV};

#[test]
fn mio_is_used_when_asked_for() {
    let reactor = Reactor::bind(config(BackendChoice::Mio)).unwrap();
    assert_eq!(reactor.backend(), BackendKind::Mio);
    assert_eq!(reactor.fallback_reason(), None);
}

#[test]
fn io_uring_is_used_or_the_fallback_says_why() {
    let reactor = Reactor::bind(config(BackendChoice::IoUring)).unwrap();
    match reactor.backend() {
        BackendKind::IoUring => assert_eq!(reactor.fallback_reason(), None),
        BackendKind::Mio => {
            let why = reactor
                .fallback_reason()
                .expect("a fallback records the reason");
            eprintln!("io_uring refused here: {why}");
        }
    }
}

#[test]
fn a_failing_io_uring_setup_falls_back_to_mio() {
    // Zero submission entries: io_uring_setup(2) refuses them (EINVAL), as a kernel that
    // forbids io_uring would refuse the call (ENOSYS, EPERM).
    let mut cfg = config(BackendChoice::IoUring);
    cfg.uring_entries = 0;
    let handle = echo_server(cfg, 64, None);
    assert_eq!(handle.backend(), BackendKind::Mio);
    assert!(handle.fallback_reason().is_some());
    let mut s = connect(&handle);
    round_trip(&mut s, b"served by the fallback");
    handle.shutdown().unwrap();
}

#[test]
fn the_environment_forces_mio() {
    // The only test in this binary that sets the environment (every other test here
    // accepts either backend); it restores what it found.
    let before = std::env::var(BACKEND_ENV).ok();
    std::env::set_var(BACKEND_ENV, "mio");
    let auto = Reactor::bind(config(BackendChoice::Auto)).unwrap();
    let uring = Reactor::bind(config(BackendChoice::IoUring)).unwrap();
    let mio = Reactor::bind(config(BackendChoice::Mio)).unwrap();
    match before {
        Some(v) => std::env::set_var(BACKEND_ENV, v),
        None => std::env::remove_var(BACKEND_ENV),
    }
    for forced in [&auto, &uring] {
        assert_eq!(forced.backend(), BackendKind::Mio);
        let why = forced
            .fallback_reason()
            .expect("the forced fallback says why");
        assert!(why.contains(BACKEND_ENV), "{why}");
    }
    assert_eq!(mio.backend(), BackendKind::Mio);
    assert_eq!(mio.fallback_reason(), None);
}

#[test]
fn io_uring_with_sqpoll_serves_or_falls_back() {
    let mut cfg = config(BackendChoice::IoUring);
    // A short idle time: the kernel's submission thread spins only briefly after each
    // submission, so the test never keeps a core busy.
    cfg.sqpoll_idle = Some(std::time::Duration::from_millis(1));
    let handle = echo_server(cfg, 64, None);
    let mut s = connect(&handle);
    for i in 0..100u32 {
        round_trip(&mut s, &i.to_le_bytes());
    }
    handle.shutdown().unwrap();
}

#[test]
fn shutdown_with_a_stage_blocked_on_a_full_egress_ring() {
    // Regression: the loop dropped its ingress producer (joining the stages) while a stage
    // waited for room in the egress ring that only the loop empties.
    for backend in [BackendChoice::Mio, BackendChoice::IoUring] {
        let handle = echo_server(config(backend), 4, None);
        let mut s = connect(&handle);
        let burst: Vec<u8> = (0..2000u32).flat_map(|i| frame(&i.to_le_bytes())).collect();
        std::io::Write::write_all(&mut s, &burst).unwrap();
        eventually("frames arrive", std::time::Duration::from_secs(10), || {
            handle.stats().frames_in > 16
        });
        handle.shutdown().unwrap();
    }
}
