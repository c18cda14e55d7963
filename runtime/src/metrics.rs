//! Metrics: ring telemetry, HDR latency histograms and counters, rendered in the
//! Prometheus text exposition format, served on a loopback port, and printed as a summary.
//!
//! Recording shares nothing with other threads: a [`LatencyRecorder`] belongs to one
//! thread and records into its own histogram behind its own lock (uncontended except for
//! the moment a render copies it); histograms of the same name are merged at render time.
//!
//! ```
//! use peregrine::metrics::Metrics;
//! use std::time::Duration;
//!
//! let metrics = Metrics::new();
//! let orders = metrics.counter("orders", "Orders received.");
//! let mut latency = metrics.latency("order_round_trip");
//! orders.add(2);
//! latency.record(Duration::from_micros(7));
//! let text = metrics.render();
//! assert!(text.contains("peregrine_orders_total 2"));
//! assert!(text.contains(r#"peregrine_latency_nanoseconds_count{name="order_round_trip"} 1"#));
//! ```

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;
use peregrine_ring::Telemetry;

type TelemetrySource = Box<dyn Fn() -> Telemetry + Send + Sync>;
/// The histograms of every recorder of one latency name.
type Recorders = Vec<Arc<Mutex<Histogram<u64>>>>;

#[derive(Default)]
struct Inner {
    rings: Mutex<Vec<(String, TelemetrySource)>>,
    latencies: Mutex<Vec<(String, Recorders)>>,
    counters: Mutex<Vec<(String, String, Counter)>>,
}

/// A set of metrics, cheap to clone (clones share the same metrics).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// A monotonically increasing counter.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Records latencies into one histogram from one thread.
pub struct LatencyRecorder {
    histogram: Arc<Mutex<Histogram<u64>>>,
}

impl LatencyRecorder {
    /// Records one latency (saturating at the histogram's ceiling of one hour).
    #[inline]
    pub fn record(&mut self, latency: Duration) {
        self.record_nanos(latency.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Records one latency in nanoseconds.
    #[inline]
    pub fn record_nanos(&mut self, nanos: u64) {
        lock(&self.histogram).saturating_record(nanos.max(1));
    }
}

impl std::fmt::Debug for LatencyRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyRecorder").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

const PREFIX: &str = "peregrine";
const QUANTILES: [f64; 5] = [0.5, 0.99, 0.999, 0.9999, 1.0];

impl Metrics {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports a ring's telemetry under the label `ring="name"`, read from `source` at each
    /// render (for example `move || ring.telemetry()`).
    pub fn watch_ring(&self, name: &str, source: impl Fn() -> Telemetry + Send + Sync + 'static) {
        lock(&self.inner.rings).push((name.to_owned(), Box::new(source)));
    }

    /// A counter exported as `peregrine_<name>_total`.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        lock(&self.inner.counters).push((name.to_owned(), help.to_owned(), c.clone()));
        c
    }

    /// A latency histogram exported as a summary `peregrine_latency_nanoseconds{name=..}`;
    /// call again with the same name for another recording thread.
    pub fn latency(&self, name: &str) -> LatencyRecorder {
        let histogram = Arc::new(Mutex::new(
            Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("static bounds are valid"),
        ));
        let mut latencies = lock(&self.inner.latencies);
        match latencies.iter_mut().find(|(n, _)| n == name) {
            Some((_, recorders)) => recorders.push(Arc::clone(&histogram)),
            None => latencies.push((name.to_owned(), vec![Arc::clone(&histogram)])),
        }
        LatencyRecorder { histogram }
    }

    /// Every latency name with its recorders' histograms merged.
    fn refresh(&self) -> Vec<(String, Histogram<u64>)> {
        lock(&self.inner.latencies)
            .iter()
            .map(|(name, recorders)| {
                let mut merged = lock(&recorders[0]).clone();
                for r in &recorders[1..] {
                    // Same bounds everywhere, so adding cannot fail.
                    let _ = merged.add(&*lock(r));
                }
                (name.clone(), merged)
            })
            .collect()
    }

    /// Renders every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(out, "# HELP {PREFIX}_{name} {help}");
            let _ = writeln!(out, "# TYPE {PREFIX}_{name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{PREFIX}_{name}{labels} {value}");
            }
        };
        for (name, help, c) in lock(&self.inner.counters).iter() {
            family(
                &format!("{name}_total"),
                "counter",
                help,
                &[(String::new(), c.get() as f64)],
            );
        }
        let rings: Vec<(String, Telemetry)> = lock(&self.inner.rings)
            .iter()
            .map(|(n, f)| (n.clone(), f()))
            .collect();
        let per_ring = |f: &dyn Fn(&Telemetry) -> u64| -> Vec<(String, f64)> {
            rings
                .iter()
                .map(|(r, t)| (format!("{{ring=\"{}\"}}", escape(r)), f(t) as f64))
                .collect()
        };
        family(
            "ring_cursor",
            "counter",
            "Sequences claimed by producers.",
            &per_ring(&|t| t.cursor),
        );
        family(
            "ring_producer_stalls_total",
            "counter",
            "Times a producer found the ring full.",
            &per_ring(&|t| t.producer_stalls),
        );
        let per_stage = |f: &dyn Fn(&peregrine_ring::StageTelemetry) -> u64| -> Vec<(String, f64)> {
            rings
                .iter()
                .flat_map(|(r, t)| {
                    t.stages.iter().map(move |s| {
                        (
                            format!("{{ring=\"{}\",stage=\"{}\"}}", escape(r), escape(&s.name)),
                            f(s) as f64,
                        )
                    })
                })
                .collect()
        };
        family(
            "stage_sequence",
            "counter",
            "Events a stage has handled.",
            &per_stage(&|s| s.sequence),
        );
        family(
            "stage_lag",
            "gauge",
            "Events a stage is behind the producer cursor.",
            &per_stage(&|s| s.lag),
        );
        family(
            "stage_batches_total",
            "counter",
            "Batches a stage has handled.",
            &per_stage(&|s| s.batches),
        );
        family(
            "stage_failures_total",
            "counter",
            "Handler failures (errors and panics).",
            &per_stage(&|s| s.failures),
        );

        let histograms = self.refresh();
        let _ = writeln!(
            out,
            "# HELP {PREFIX}_latency_nanoseconds Latency percentiles."
        );
        let _ = writeln!(out, "# TYPE {PREFIX}_latency_nanoseconds summary");
        for (name, h) in &histograms {
            let name = escape(name);
            for q in QUANTILES {
                let _ = writeln!(
                    out,
                    "{PREFIX}_latency_nanoseconds{{name=\"{name}\",quantile=\"{q}\"}} {}",
                    h.value_at_quantile(q)
                );
            }
            let sum = h.mean() * h.len() as f64;
            let _ = writeln!(
                out,
                "{PREFIX}_latency_nanoseconds_sum{{name=\"{name}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "{PREFIX}_latency_nanoseconds_count{{name=\"{name}\"}} {}",
                h.len()
            );
        }
        out
    }

    /// A human-readable summary: counters, each stage's progress, and latency percentiles
    /// in microseconds.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (name, _, c) in lock(&self.inner.counters).iter() {
            let _ = writeln!(out, "{name}: {}", c.get());
        }
        for (ring, source) in lock(&self.inner.rings).iter() {
            let t = source();
            let _ = writeln!(
                out,
                "ring {ring}: cursor {}, producer stalls {}",
                t.cursor, t.producer_stalls
            );
            for s in &t.stages {
                let mean = if s.batches == 0 {
                    0.0
                } else {
                    s.events as f64 / s.batches as f64
                };
                let _ = writeln!(
                    out,
                    "  {:<16} handled {:>10}  lag {:>6}  mean batch {:>7.1}  failures {}",
                    s.name, s.sequence, s.lag, mean, s.failures
                );
            }
        }
        for (name, h) in self.refresh() {
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{name}: n={} p50={:.2}us p99={:.2}us p99.9={:.2}us p99.99={:.2}us max={:.2}us",
                h.len(),
                us(0.5),
                us(0.99),
                us(0.999),
                us(0.9999),
                h.max() as f64 / 1000.0
            );
        }
        out
    }

    /// Serves `GET /metrics` on `addr` (use a loopback address) from a thread named
    /// `metrics`, until the returned server is dropped.
    ///
    /// # Errors
    ///
    /// The bind error.
    pub fn serve(&self, addr: SocketAddr) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (metrics, flag) = (self.clone(), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    if let Ok(stream) = conn {
                        // A failed exchange concerns that client only.
                        let _ = answer(stream, &metrics);
                    }
                }
            })?;
        Ok(MetricsServer {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }
}

/// Reads one HTTP request (bounded) and answers it.
fn answer(mut stream: TcpStream, metrics: &Metrics) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET / ") {
        ("200 OK", metrics.render())
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// A running metrics endpoint; dropping it stops the thread.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
