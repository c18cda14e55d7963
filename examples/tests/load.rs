//! The load generators against a plain echo server: every command answered and timed, and
//! a server that goes away is an error, not a hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use peregrine_examples::engine::{load, load_polling, Load};

/// Echoes every byte back, one thread per connection; with `close_at_once`, closes each
/// connection as soon as it is accepted.
fn echo_server(close_at_once: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if close_at_once {
                drop(stream);
                continue;
            }
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn check(l: &Load, expected: u64) {
    assert_eq!(l.sent, expected);
    assert_eq!(l.answered, expected);
    assert_eq!(
        l.latency.len(),
        expected,
        "one round trip recorded per reply"
    );
    assert!(l.latency.min() > 0, "a round trip takes time");
    assert!(
        l.elapsed >= Duration::from_millis(250),
        "the schedule spans the duration"
    );
}

#[test]
fn both_load_generators_time_every_reply() {
    let addr = echo_server(false);
    // 2,000 commands/s over two connections for 0.3 s: 300 per connection.
    let sleeping = load(addr, 2, 2_000, Duration::from_millis(300), 3).unwrap();
    check(&sleeping, 600);
    let polling = load_polling(addr, 2, 2_000, Duration::from_millis(300), 3).unwrap();
    check(&polling, 600);
}

#[test]
fn the_polling_generator_reports_a_closed_connection() {
    let addr = echo_server(true);
    let err = load_polling(addr, 1, 1_000, Duration::from_millis(200), 3).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("closed") || text.contains("reset") || text.contains("pipe"),
        "{text}"
    );
}
