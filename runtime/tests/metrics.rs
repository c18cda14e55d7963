//! Metrics rendered from a live ring and served over loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use peregrine::metrics::Metrics;
use peregrine::ring::{single_producer, WaitStrategy};

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn ring_telemetry_and_latency_are_exported() {
    let mut b = single_producer(64, || 0u64)
        .unwrap()
        .wait_strategy(WaitStrategy::blocking());
    let id = b.poller("lagging").add().unwrap();
    let (mut p, ring) = b.build().unwrap();
    let ring = Arc::new(ring);
    let metrics = Metrics::new();
    let r = Arc::clone(&ring);
    metrics.watch_ring("input", move || r.telemetry());
    let orders = metrics.counter("orders", "Orders received.");
    let mut latency = metrics.latency("round_trip");
    for i in 0..10 {
        p.publish(|e| *e = i).unwrap();
        orders.add(1);
        latency.record(Duration::from_micros(10 + i));
    }
    let _ = id;

    let server = metrics.serve("127.0.0.1:0".parse().unwrap()).unwrap();
    let response = get(server.local_addr(), "/metrics");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    for line in [
        "# TYPE peregrine_orders_total counter",
        "peregrine_orders_total 10",
        r#"peregrine_ring_cursor{ring="input"} 10"#,
        r#"peregrine_stage_lag{ring="input",stage="lagging"} 10"#,
        r#"peregrine_latency_nanoseconds_count{name="round_trip"} 10"#,
    ] {
        assert!(
            response.lines().any(|l| l == line),
            "missing {line:?} in\n{response}"
        );
    }
    let p50 = response
        .lines()
        .find(|l| {
            l.starts_with(r#"peregrine_latency_nanoseconds{name="round_trip",quantile="0.5"}"#)
        })
        .unwrap();
    let value: f64 = p50.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((13_000.0..=15_100.0).contains(&value), "p50 {value}");

    assert!(get(server.local_addr(), "/nope").starts_with("HTTP/1.1 404"));
    let summary = metrics.summary();
    assert!(summary.contains("orders: 10"), "{summary}");
    assert!(summary.contains("lagging"), "{summary}");
    drop(server);
    drop(p);
}
