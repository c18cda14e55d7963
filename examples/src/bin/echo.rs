//! The echo server on the reactor.
//!
//! ```text
//! echo                      serve on 127.0.0.1:7070 until interrupted
//! echo --addr 127.0.0.1:9000 --backend mio
//! echo --selftest           serve on a free loopback port, check it with clients, exit
//! echo --client ADDR        check a running server
//! ```
//!
//! The backend is io_uring where the kernel allows it, else mio (`--backend mio` or
//! `PEREGRINE_REACTOR_BACKEND=mio` forces mio).

#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks, missing_debug_implementations)]

use std::net::SocketAddr;
use std::process::ExitCode;

use peregrine_examples::echo;
use peregrine_reactor::{BackendChoice, Config};

fn usage() -> ExitCode {
    eprintln!("usage: echo [--addr HOST:PORT] [--backend auto|mio|io_uring] [--selftest | --client HOST:PORT]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut config = Config::default();
    let mut selftest = false;
    let mut client: Option<SocketAddr> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => match args.next().and_then(|a| a.parse().ok()) {
                Some(addr) => config.addr = addr,
                None => return usage(),
            },
            "--backend" => {
                config.backend = match args.next().as_deref() {
                    Some("auto") => BackendChoice::Auto,
                    Some("mio") => BackendChoice::Mio,
                    Some("io_uring") => BackendChoice::IoUring,
                    _ => return usage(),
                }
            }
            "--selftest" => selftest = true,
            "--client" => match args.next().and_then(|a| a.parse().ok()) {
                Some(addr) => client = Some(addr),
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    if let Some(addr) = client {
        return run_check(addr);
    }
    if selftest {
        config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    }
    let handle = match echo::spawn(config) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match handle.fallback_reason() {
        Some(why) => println!(
            "echo: listening on {} (backend {}; io_uring unavailable: {why})",
            handle.local_addr(),
            handle.backend()
        ),
        None => println!(
            "echo: listening on {} (backend {})",
            handle.local_addr(),
            handle.backend()
        ),
    }
    if selftest {
        let code = run_check(handle.local_addr());
        // The clients have hung up; give the loop a moment to count their closes.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while handle.stats().open > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let stats = handle.stats();
        println!(
            "echo: {} frames in, {} out, {} connections closed",
            stats.frames_in,
            stats.frames_out,
            stats.closed_total()
        );
        if let Err(e) = handle.shutdown() {
            eprintln!("echo: {e}");
            return ExitCode::FAILURE;
        }
        return code;
    }
    loop {
        std::thread::park();
    }
}

fn run_check(addr: SocketAddr) -> ExitCode {
    match echo::check(addr, 8, 2000) {
        Ok((frames, took)) => {
            println!(
                "echo: {frames} frames echoed and checked in {:.1} ms ({:.1} µs per round trip per client)",
                took.as_secs_f64() * 1e3,
                took.as_secs_f64() * 1e6 / (frames as f64 / 8.0)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo: check failed: {e}");
            ExitCode::FAILURE
        }
    }
}
