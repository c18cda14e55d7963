//! Journal benchmarks, side by side in one run: appends (single and batched, three payload
//! sizes, each durability mode) against the floors measured in the same run (a memcpy into a
//! pre-faulted mapping, a buffered `write(2)` loop), replay and recovery scan rates against a
//! plain sequential read of the same files, and writer-to-tailer latency across two threads
//! and two processes next to a two-thread cache-line floor.
//!
//! ```text
//! cargo bench -p peregrine-benches --bench journal             # full run (minutes)
//! cargo bench -p peregrine-benches --bench journal -- --quick  # seconds (CI)
//! PEREGRINE_BENCH_QUICK=1 cargo bench -p peregrine-benches --bench journal
//! cargo bench -p peregrine-benches --bench journal -- --only tail  # one part: append, replay, tail
//! cargo bench -p peregrine-benches --bench journal -- --only append --payload 64  # one size
//! ```
//!
//! Latency is measured per operation with `Instant` (its own cost is printed as `timer`);
//! the tailer scenarios stamp each message with its intended send time on a fixed schedule,
//! so a stalled writer shows up as latency (no coordinated omission). Files go under
//! `std::env::temp_dir()`; the file system type is printed because it decides what `msync`
//! costs.

use std::fs::{self, File, OpenOptions};
use std::hint::black_box;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use peregrine_journal::{
    verify, Appender, Config, Durability, Pretouch, Reader, Tailer, TailerWait,
};

const TAILER_CHILD: &str = "PEREGRINE_JOURNAL_BENCH_TAILER";
const TAILER_COUNT: &str = "PEREGRINE_JOURNAL_BENCH_COUNT";
const TAILER_CORE: &str = "PEREGRINE_JOURNAL_BENCH_CORE";
const TAILER_WAIT: &str = "PEREGRINE_JOURNAL_BENCH_WAIT";
const PAYLOADS: [usize; 3] = [64, 256, 1024];
const BATCH: usize = 32;

/// Run sizes; `quick` keeps the whole run to a few seconds.
#[derive(Debug, Clone, Copy)]
struct Plan {
    quick: bool,
    records: usize,
    batch_records: usize,
    always_records: usize,
    segment_size: u64,
    floor_bytes: u64,
    replay_bytes: u64,
    tail_messages: usize,
    tail_interval: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                records: 20_000,
                batch_records: 640,
                always_records: 20,
                segment_size: 1 << 20,
                floor_bytes: 16 << 20,
                replay_bytes: 16 << 20,
                tail_messages: 10_000,
                tail_interval: Duration::from_micros(5),
            }
        } else {
            Plan {
                quick,
                records: 2_000_000,
                batch_records: 200_000,
                always_records: 2_000,
                segment_size: 32 << 20,
                floor_bytes: 256 << 20,
                replay_bytes: 1 << 30,
                tail_messages: 1_000_000,
                tail_interval: Duration::from_micros(2),
            }
        }
    }
}

fn main() {
    if let Some(dir) = std::env::var_os(TAILER_CHILD) {
        tailer_child(Path::new(&dir));
        return;
    }
    // cargo passes `--bench`; anything but `--quick` is ignored.
    let quick = std::env::args().any(|a| a == "--quick")
        || std::env::var("PEREGRINE_BENCH_QUICK").is_ok_and(|v| v == "1");
    let plan = Plan::new(quick);
    let args: Vec<String> = std::env::args().collect();
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let root = std::env::temp_dir().join(format!("peregrine-journal-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root).expect("create bench directory");
    let started = Instant::now();

    print_machine(&root, plan);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    if let Some(core) = cores.first() {
        core_affinity::set_for_current(*core);
    }

    if run("append") {
        println!("\n### Appends\n");
        println!(
            "| scenario | payload | durability | records | Mrec/s | MB/s | p50 | p99 | p99.9 | p99.99 | max | thr vs memcpy | thr vs write(2) | p99.99/p50 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        let timer = timer_overhead(plan.records);
        print_row("timer (Instant::now pair)", "-", "-", &timer, None);
        let sizes: Vec<usize> = match args.iter().position(|a| a == "--payload") {
            Some(i) => {
                let size = args.get(i + 1).and_then(|v| v.parse().ok());
                match size {
                    Some(size) if size > 0 => vec![size],
                    _ => {
                        eprintln!("--payload takes a payload size in bytes, such as 64");
                        std::process::exit(2);
                    }
                }
            }
            None => PAYLOADS.to_vec(),
        };
        for payload in sizes {
            append_scenarios(&root, plan, payload);
        }
    }

    if run("replay") {
        println!("\n### Replay and recovery\n");
        replay_scenarios(&root, plan);
    }

    if run("tail") {
        println!("\n### Writer to tailer (40-byte messages, intended-time start)\n");
        if cores.len() < 2 {
            println!(
                "skipped: needs 2 cores to pin a busy-spinning writer and tailer, found {}",
                cores.len()
            );
        } else {
            tail_scenarios(&root, plan, cores[0], cores[1]);
        }
    }

    let _ = fs::remove_dir_all(&root);
    println!("\ntotal bench time: {:.2?}", started.elapsed());
}

fn print_machine(root: &Path, plan: Plan) {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "## peregrine-journal bench ({})",
        if plan.quick { "quick" } else { "full" }
    );
    println!();
    println!(
        "machine: {cpu}, {} cpus, kernel {}; temp dir {} on {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel.trim(),
        root.display(),
        fs_type(root)
    );
    println!(
        "plan: {} records per append scenario ({} under Batch, {} under Always), segments of {} MiB, memcpy floor over {} MiB, replay over {} MiB, {} tailer messages every {:?}",
        plan.records,
        plan.batch_records,
        plan.always_records,
        plan.segment_size >> 20,
        plan.floor_bytes >> 20,
        plan.replay_bytes >> 20,
        plan.tail_messages,
        plan.tail_interval
    );
}

fn fs_type(path: &Path) -> &'static str {
    use std::os::unix::ffi::OsStrExt;
    let mut c_path = path.as_os_str().as_bytes().to_vec();
    c_path.push(0);
    // SAFETY: `statfs` zero-initialised is a valid value (plain integers).
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is a valid out-pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr().cast(), &mut stat) };
    if rc != 0 {
        return "unknown fs";
    }
    match stat.f_type as i64 {
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x794C_7630 => "overlayfs",
        _ => "other fs",
    }
}

/// Throughput and latency of one scenario.
struct Measured {
    records: usize,
    payload: usize,
    elapsed: Duration,
    latency: Histogram<u64>,
}

impl Measured {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("histogram bounds")
}

fn ns(v: u64) -> String {
    if v < 10_000 {
        format!("{v} ns")
    } else if v < 10_000_000 {
        format!("{:.1} µs", v as f64 / 1e3)
    } else {
        format!("{:.1} ms", v as f64 / 1e6)
    }
}

fn percentiles(h: &Histogram<u64>) -> String {
    format!(
        "{} | {} | {} | {} | {}",
        ns(h.value_at_quantile(0.50)),
        ns(h.value_at_quantile(0.99)),
        ns(h.value_at_quantile(0.999)),
        ns(h.value_at_quantile(0.9999)),
        ns(h.max())
    )
}

/// Prints one append row; `floors` are (memcpy, write) throughputs in records/s.
fn print_row(scenario: &str, payload: &str, mode: &str, m: &Measured, floors: Option<(f64, f64)>) {
    let rate = m.records_per_sec();
    let (vs_memcpy, vs_write) = match floors {
        Some((memcpy, write)) => (
            format!("{:.2}", rate / memcpy),
            format!("{:.2}", rate / write),
        ),
        None => ("-".into(), "-".into()),
    };
    let p50 = m.latency.value_at_quantile(0.5).max(1);
    println!(
        "| {scenario} | {payload} | {mode} | {} | {:.2} | {:.0} | {} | {vs_memcpy} | {vs_write} | {:.1} |",
        m.records,
        rate / 1e6,
        rate * m.payload as f64 / 1e6,
        percentiles(&m.latency),
        m.latency.value_at_quantile(0.9999) as f64 / p50 as f64
    );
}

/// Runs `op` `records` times untimed (throughput), then `records` times timed one by one.
fn measure(records: usize, payload: usize, mut op: impl FnMut(usize)) -> Measured {
    for i in 0..records / 10 {
        op(i);
    }
    let start = Instant::now();
    for i in 0..records {
        op(i);
    }
    let elapsed = start.elapsed();
    let mut latency = histogram();
    for i in 0..records {
        let t = Instant::now();
        op(i);
        latency.saturating_record(t.elapsed().as_nanos() as u64);
    }
    Measured {
        records,
        payload,
        elapsed,
        latency,
    }
}

fn timer_overhead(records: usize) -> Measured {
    measure(records, 0, |i| {
        black_box(i);
    })
}

/// `records` single appends of `data` (see [`measure`]).
fn measure_appends(appender: &mut Appender, records: usize, data: &[u8]) -> Measured {
    measure(records, data.len(), |_| {
        appender.append(black_box(data)).expect("append");
    })
}

/// About `records` appends of `data` in batches of [`BATCH`]; latency is per batch,
/// throughput per record.
fn measure_batches(appender: &mut Appender, records: usize, data: &[u8]) -> Measured {
    let batch: Vec<&[u8]> = vec![data; BATCH];
    let mut m = measure(records.div_ceil(BATCH).max(2), data.len(), |_| {
        appender
            .append_batch(black_box(&batch))
            .expect("append batch");
    });
    m.records *= BATCH;
    m
}

/// Creates (or truncates) `path` as a `len`-byte file of zeros written through `pwrite`
/// one `zeros` at a time, the way the journal prepares a segment: the write size decides
/// the page-cache folio size, so 2 MiB writes give huge-page-mappable folios.
fn zeroed_file(path: &Path, len: usize, zeros: &[u8]) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create a bench file");
    file.set_len(len as u64).expect("size a bench file");
    let mut at = 0;
    while at < len {
        let n = zeros.len().min(len - at);
        std::os::unix::fs::FileExt::write_all_at(&file, &zeros[..n], at as u64)
            .expect("zero a bench file");
        at += n;
    }
    file
}

fn record_len(payload: usize) -> usize {
    (16 + payload + 7) & !7
}

/// Floor: copy the same bytes a record takes into a pre-faulted shared file mapping, reused
/// as a ring. In the full run the mapping (256 MiB) is larger than any last-level cache, so
/// like the journal's appends the copies go to memory; a mapping that fits in cache would be
/// a floor no log that keeps its data can reach. The file is filled with zeros 2 MiB at a
/// time through `pwrite` and the mapping asks for transparent huge pages, as the journal
/// prepares its segments with `Config::huge_pages`, so where the file system maps those in
/// 2 MiB pages the floor gets them too: it is not handicapped by TLB misses that the
/// journal's huge-page rows do not take (its default rows take them; the floor stays the
/// best case).
fn memcpy_floor(root: &Path, plan: Plan, payload: usize) -> Measured {
    let path = root.join("memcpy-floor");
    let file = zeroed_file(&path, plan.floor_bytes as usize, &vec![0u8; 2 << 20]);
    // SAFETY: a private file this process just created; nothing else maps or truncates it.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map floor");
    // Huge pages where the file system offers them, as `Config::huge_pages` segments get.
    let _ = map.advise(memmap2::Advice::HugePage);
    map.fill(0); // pre-fault every page for writing
    let data = vec![0xA5u8; payload];
    let header = [0x5Au8; 16];
    let len = record_len(payload);
    let mut offset = 0usize;
    let m = measure(plan.records, payload, |_| {
        if offset + len > map.len() {
            offset = 0;
        }
        map[offset..offset + 16].copy_from_slice(&header);
        map[offset + 16..offset + 16 + payload].copy_from_slice(black_box(&data));
        offset += len;
    });
    drop(map);
    let _ = fs::remove_file(path);
    m
}

/// Floor: the same bytes through a 64 KiB `BufWriter` over `write(2)`.
fn write_floor(root: &Path, plan: Plan, payload: usize) -> Measured {
    let path = root.join("write-floor");
    let file = File::create(&path).expect("floor file");
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut record = vec![0xA5u8; record_len(payload)];
    record[..16].fill(0x5A);
    let m = measure(plan.records, payload, |_| {
        out.write_all(black_box(&record)).expect("write floor");
    });
    drop(out);
    let _ = fs::remove_file(path);
    m
}

/// Floor of the sustained rows: how fast the kernel hands out new segment pages ready for
/// writing, done the way the journal prepares a segment by default (create the file, write
/// zeros through `pwrite` 256 KiB at a time, map it, `MADV_POPULATE_WRITE`), one segment
/// after another on this thread. Appends that outrun the background preparation wait for it, so the sustained
/// rate (default runway of two segments) cannot exceed this one; the runway rows, prepared
/// before the clock starts, are not bound by it. Printed in records per second of the
/// payload's record size.
fn print_provision_floor(root: &Path, plan: Plan, payload: usize, floors: Option<(f64, f64)>) {
    let segments: usize = if plan.quick { 2 } else { 8 };
    let size = plan.segment_size as usize;
    let zeros = vec![0u8; 256 * 1024];
    let start = Instant::now();
    for i in 0..segments {
        let file = zeroed_file(&root.join(format!("provision-{i}")), size, &zeros);
        // SAFETY: a private file this process just created; nothing else maps or truncates it.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.expect("map provision");
        if map.advise(memmap2::Advice::PopulateWrite).is_err() {
            // Older kernels: touch one byte per page instead.
            let mut map = map;
            for page in (0..size).step_by(4096) {
                map[page] = 0;
            }
        }
    }
    let elapsed = start.elapsed();
    let bytes = (segments * size) as f64;
    let rate = bytes / record_len(payload) as f64 / elapsed.as_secs_f64();
    let (vs_memcpy, vs_write) = match floors {
        Some((memcpy, write)) => (
            format!("{:.2}", rate / memcpy),
            format!("{:.2}", rate / write),
        ),
        None => ("-".into(), "-".into()),
    };
    println!(
        "| floor: segment provisioning ({segments} x {} MiB, {:.1} ms each; bounds the sustained rows) | {payload} B | - | {} | {:.2} | {:.0} | - | - | - | - | - | {vs_memcpy} | {vs_write} | - |",
        size >> 20,
        elapsed.as_secs_f64() * 1e3 / segments as f64,
        (bytes / record_len(payload) as f64) as u64,
        rate / 1e6,
        bytes / elapsed.as_secs_f64() / 1e6,
    );
    for i in 0..segments {
        let _ = fs::remove_file(root.join(format!("provision-{i}")));
    }
}

fn modes() -> [(&'static str, Durability); 3] {
    [
        ("none", Durability::None),
        (
            "batch(64, 1ms)",
            Durability::Batch {
                max_records: 64,
                max_delay: Duration::from_millis(1),
            },
        ),
        ("always", Durability::Always),
    ]
}

fn journal_config(plan: Plan, durability: Durability) -> Config {
    Config::default()
        .segment_size(plan.segment_size)
        .durability(durability)
        .pretouch(true)
}

fn append_scenarios(root: &Path, plan: Plan, payload: usize) {
    let memcpy = memcpy_floor(root, plan, payload);
    let write = write_floor(root, plan, payload);
    let floors = Some((memcpy.records_per_sec(), write.records_per_sec()));
    let size = format!("{payload} B");
    print_row(
        "floor: memcpy to pre-faulted mapping",
        &size,
        "-",
        &memcpy,
        floors,
    );
    print_row("floor: buffered write(2)", &size, "-", &write, floors);
    print_provision_floor(root, plan, payload, floors);
    let data = vec![0xA5u8; payload];
    for (name, durability) in modes() {
        let records = match durability {
            Durability::None => plan.records,
            Durability::Batch { .. } => plan.batch_records,
            Durability::Always => plan.always_records,
        };
        let dir = root.join(format!("append-{payload}-{name}"));
        let (mut appender, _) =
            Appender::open(&dir, journal_config(plan, durability)).expect("open journal");
        let m = measure_appends(&mut appender, records, &data);
        drop(appender);
        print_row("journal append", &size, name, &m, floors);
        let _ = fs::remove_dir_all(&dir);

        // Batched: one `append_batch` of BATCH records per operation; latency is per batch.
        let dir = root.join(format!("batch-{payload}-{name}"));
        let (mut appender, _) =
            Appender::open(&dir, journal_config(plan, durability)).expect("open journal");
        let m = measure_batches(&mut appender, records, &data);
        drop(appender);
        print_row(
            &format!("journal append_batch x{BATCH} (latency per batch)"),
            &size,
            name,
            &m,
            floors,
        );
        let _ = fs::remove_dir_all(&dir);
        if durability == Durability::None {
            huge_page_scenarios(root, plan, payload, floors);
            runway_scenarios(root, plan, payload, floors);
        }
    }
}

/// Sustained appends under `Durability::None` with [`Config::huge_pages`]: segments
/// prepared in 2 MiB pages where the file system does it (the bench prints whether this
/// one did), so appends take no page-table walks at 4 KiB page boundaries.
fn huge_page_scenarios(root: &Path, plan: Plan, payload: usize, floors: Option<(f64, f64)>) {
    let size = format!("{payload} B");
    let data = vec![0xA5u8; payload];
    let config = || journal_config(plan, Durability::None).huge_pages(true);
    let dir = root.join(format!("huge-single-{payload}"));
    let (mut appender, _) = Appender::open(&dir, config()).expect("open journal");
    let m = measure_appends(&mut appender, plan.records, &data);
    let huge = huge_mapped_mib();
    drop(appender);
    let _ = fs::remove_dir_all(&dir);
    print_row(
        &format!("journal append, huge pages ({huge} MiB mapped 2 MiB at a time at the end)"),
        &size,
        "none",
        &m,
        floors,
    );
    let dir = root.join(format!("huge-batch-{payload}"));
    let (mut appender, _) = Appender::open(&dir, config()).expect("open journal");
    let m = measure_batches(&mut appender, plan.records, &data);
    drop(appender);
    let _ = fs::remove_dir_all(&dir);
    print_row(
        &format!("journal append_batch x{BATCH} (latency per batch), huge pages"),
        &size,
        "none",
        &m,
        floors,
    );
}

/// MiB of file pages this process maps 2 MiB at a time (`FilePmdMapped` over
/// `/proc/self/smaps_rollup`); 0 where unknown.
fn huge_mapped_mib() -> u64 {
    fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("FilePmdMapped:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 10)
}

/// Clears the accessed bits of this process's page-table entries for every mapping of a file
/// under `dir` (`MADV_COLD`, which also moves the pages to the inactive list), as a scanner
/// sampling which memory is in use does; returns the bytes advised. The mappings are the
/// appender's own: `/proc/self/maps` lists them with their files.
fn clear_accessed_bits(dir: &Path) -> usize {
    let Ok(maps) = fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let dir = dir.to_string_lossy();
    let mut advised = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(path)) = (fields.next(), fields.nth(4)) else {
            continue;
        };
        if !path.starts_with(dir.as_ref()) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: `MADV_COLD` is only advice: it changes no contents and no mapping, and the
        // range is one this process has mapped (read from its own maps just now).
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_COLD) };
        if rc == 0 {
            advised += end - start;
        }
    }
    advised
}

/// Largest runway (segments prepared before the run) the bench asks for: the run's whole
/// volume at 64 B and 256 B in the full plan; at 1 KiB (4.4 GB at the plan's record count)
/// the runway rows append fewer records to fit it.
const MAX_RUNWAY_BYTES: u64 = 1536 << 20;

/// Appends under `Durability::None` with a runway: [`Config::prepare_ahead`] covers every
/// segment the run fills and [`Appender::wait_prepared`] returns before the first append,
/// so the pages are faulted in before the clock starts, as the memcpy floor's are. This is
/// the rate and latency of the append path itself; the rows above, with the default two
/// segments ahead, are the sustained rate with page preparation competing on the other core.
fn runway_scenarios(root: &Path, plan: Plan, payload: usize, floors: Option<(f64, f64)>) {
    let size = format!("{payload} B");
    // `measure` runs the operation 2.1 times `records` (warm-up, throughput, latency). Where
    // that does not fit the budget (1 KiB records in the full plan), the runway rows append
    // fewer records, still rolling through every segment of the budget.
    let per_record = record_len(payload) as u64 * 21 / 10;
    let records = (plan.records as u64).min(MAX_RUNWAY_BYTES / per_record) as usize;
    let volume = records as u64 * per_record;
    let segments = (volume / plan.segment_size + 2) as usize;
    let data = vec![0xA5u8; payload];
    let open = |tag: &str, touch_ahead: bool| {
        let dir = root.join(format!("runway-{tag}-{payload}"));
        let config = journal_config(plan, Durability::None)
            .prepare_ahead(segments)
            .touch_ahead(touch_ahead);
        let (mut appender, _) = Appender::open(&dir, config).expect("open journal");
        appender.wait_prepared().expect("prepare runway");
        (dir, appender)
    };
    // A scan of the runway after it was prepared, as a proactive-reclaim or tiering scanner
    // (DAMON) does: the accessed bits of its page-table entries are cleared. With and
    // without the background thread touching ahead of the appender (`Config::touch_ahead`).
    for touch_ahead in [false, true] {
        let tag = if touch_ahead {
            "scanned-touch"
        } else {
            "scanned"
        };
        let (dir, mut appender) = open(tag, touch_ahead);
        let scanned = clear_accessed_bits(&dir);
        let m = measure_appends(&mut appender, records, &data);
        drop(appender);
        let _ = fs::remove_dir_all(&dir);
        print_row(
            &format!(
                "journal append, runway, accessed bits of {} MiB cleared first (MADV_COLD), touch ahead {}",
                scanned >> 20,
                if touch_ahead { "on" } else { "off" }
            ),
            &size,
            "none",
            &m,
            floors,
        );
    }
    let (dir, mut appender) = open("single", true);
    let m = measure_appends(&mut appender, records, &data);
    let rolls = appender.segment_index();
    drop(appender);
    let _ = fs::remove_dir_all(&dir);
    print_row(
        &format!("journal append, runway of {segments} segments ({rolls} rolls)"),
        &size,
        "none",
        &m,
        floors,
    );
    let (dir, mut appender) = open("batch", true);
    let m = measure_batches(&mut appender, records, &data);
    let rolls = appender.segment_index();
    drop(appender);
    let _ = fs::remove_dir_all(&dir);
    print_row(
        &format!(
            "journal append_batch x{BATCH} (latency per batch), runway of {segments} segments ({rolls} rolls)"
        ),
        &size,
        "none",
        &m,
        floors,
    );
}

fn replay_scenarios(root: &Path, plan: Plan) {
    let dir = root.join("replay");
    let payload = vec![0x3Cu8; 256];
    let records = (plan.replay_bytes / record_len(payload.len()) as u64) as usize;
    let (mut appender, _) =
        Appender::open(&dir, journal_config(plan, Durability::None)).expect("open journal");
    let write_start = Instant::now();
    let batch: Vec<&[u8]> = vec![&payload[..]; BATCH];
    for _ in 0..records / BATCH {
        appender.append_batch(&batch).expect("append");
    }
    let write_time = write_start.elapsed();
    drop(appender);
    let files: Vec<PathBuf> = {
        let mut f: Vec<PathBuf> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        f.sort();
        f
    };
    let bytes: u64 = files
        .iter()
        .map(|f| fs::metadata(f).map_or(0, |m| m.len()))
        .sum();

    // Plain sequential read of the same files (page cache warm after the first pass).
    let mut buf = vec![0u8; 1 << 20];
    let plain = |buf: &mut Vec<u8>| {
        let start = Instant::now();
        let mut sum = 0u64;
        for f in &files {
            let mut file = File::open(f).expect("open segment");
            loop {
                let n = file.read(buf).expect("read");
                if n == 0 {
                    break;
                }
                sum = sum.wrapping_add(u64::from(buf[n - 1]));
            }
        }
        black_box(sum);
        start.elapsed()
    };
    plain(&mut buf);
    let plain_time = plain(&mut buf);

    let replay = || {
        let start = Instant::now();
        let mut reader = Reader::open(&dir).expect("reader");
        let mut n = 0u64;
        let mut sum = 0u64;
        while let Some(record) = reader.next().expect("read") {
            n += 1;
            sum = sum.wrapping_add(u64::from(record.payload()[0]));
        }
        black_box(sum);
        assert_eq!(n as usize, records / BATCH * BATCH);
        start.elapsed()
    };
    replay();
    let replay_time = replay();

    let verify_start = Instant::now();
    let report = verify(&dir).expect("verify");
    let verify_time = verify_start.elapsed();
    assert_eq!(report.records as usize, records / BATCH * BATCH);

    let open_start = Instant::now();
    let (appender, recovery) =
        Appender::open(&dir, journal_config(plan, Durability::None)).expect("reopen");
    let open_time = open_start.elapsed();
    drop(appender);

    let gbps = |t: Duration| bytes as f64 / t.as_secs_f64() / 1e9;
    println!(
        "journal: {} segments, {} MiB, {} records of 256 B (written in {:.2?})\n",
        files.len(),
        bytes >> 20,
        report.records,
        write_time
    );
    println!("| scenario | time | GB/s | vs plain read |");
    println!("|---|---|---|---|");
    println!("| floor: plain sequential read(2) of the segment files | {plain_time:.2?} | {:.2} | 1.00 |", gbps(plain_time));
    println!(
        "| replay: Reader from 0, CRC checked | {replay_time:.2?} | {:.2} | {:.2} |",
        gbps(replay_time),
        plain_time.as_secs_f64() / replay_time.as_secs_f64()
    );
    println!(
        "| recovery scan: verify (every record of every segment) | {verify_time:.2?} | {:.2} | {:.2} |",
        gbps(verify_time),
        plain_time.as_secs_f64() / verify_time.as_secs_f64()
    );
    println!(
        "| recovery on open: Appender::open (headers + tail segment of {} records) | {open_time:.2?} | - | - |",
        recovery.tail_records
    );
    let _ = fs::remove_dir_all(&dir);
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on one machine.
fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Appends `count` 40-byte messages on a fixed schedule, each stamped with its intended send
/// time, with the next segments pre-faulted by `pretouch`.
fn paced_writer(dir: &Path, plan: Plan, count: usize, pretouch: Pretouch) {
    let config = Config::default()
        .segment_size((plan.segment_size / 4).max(1 << 20))
        .pretouch_mode(pretouch);
    let (mut appender, _) = Appender::open(dir, config).expect("open journal");
    // Under `Pretouch::OnIdle` the writer prepares the next segment itself, one step right
    // after a send (when the next one is furthest away), until the segment is ready.
    let mut pretouch_left = true;
    let mut segment = appender.segment_index();
    let interval = plan.tail_interval.as_nanos() as u64;
    let start = now_ns() + 1_000_000;
    let mut message = [0u8; 40];
    for i in 0..count as u64 {
        let intended = start + i * interval;
        while now_ns() < intended {
            std::hint::spin_loop();
        }
        message[..8].copy_from_slice(&intended.to_le_bytes());
        appender.append(&message).expect("append");
        if appender.segment_index() != segment {
            segment = appender.segment_index();
            pretouch_left = true;
        }
        if pretouch_left {
            pretouch_left = appender.pretouch().expect("pretouch");
        }
    }
}

/// The tailer's wait strategies the bench runs, by the name it prints and passes to the child.
fn tailer_wait(name: &str) -> TailerWait {
    match name {
        "BusySpin" => TailerWait::BusySpin,
        "Backoff" => TailerWait::Backoff,
        other => panic!("unknown tailer wait {other}"),
    }
}

/// Reads `count` messages with `tailer`'s wait strategy, recording receive time minus
/// intended send time.
fn tail_into(tailer: &mut Tailer, count: usize) -> Histogram<u64> {
    let mut h = histogram();
    let mut received = 0;
    while received < count {
        let record = tailer
            .next_timeout(Duration::from_secs(30))
            .expect("tail")
            .expect("a message within 30 s");
        let now = now_ns();
        let sent = u64::from_le_bytes(record.payload()[..8].try_into().expect("stamp"));
        h.saturating_record(now.saturating_sub(sent));
        received += 1;
    }
    h
}

fn tailer_child(dir: &Path) {
    let count: usize = std::env::var(TAILER_COUNT)
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("count");
    // The parent names the core: a child inherits the parent's pinning, so its own list of
    // usable cores would hold only the writer's core.
    if let Some(id) = std::env::var(TAILER_CORE).ok().and_then(|v| v.parse().ok()) {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
    let wait = std::env::var(TAILER_WAIT).expect("wait strategy");
    let mut tailer = Tailer::open(dir, 0)
        .expect("tailer")
        .wait(tailer_wait(&wait));
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let h = tail_into(&mut tailer, count);
    println!(
        "{} {} {} {} {}",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.value_at_quantile(0.9999),
        h.max()
    );
}

fn tail_scenarios(
    root: &Path,
    plan: Plan,
    writer_core: core_affinity::CoreId,
    tailer_core: core_affinity::CoreId,
) {
    println!("| scenario | messages | p50 | p99 | p99.9 | p99.99 | max |");
    println!("|---|---|---|---|---|---|---|");

    // Floor: two threads bouncing a counter through two cache lines; one way = round trip / 2.
    let ping = Arc::new(CachePadded::new(AtomicU64::new(0)));
    let pong = Arc::new(CachePadded::new(AtomicU64::new(0)));
    let rounds = plan.tail_messages as u64;
    let echo = {
        let (ping, pong) = (ping.clone(), pong.clone());
        std::thread::spawn(move || {
            core_affinity::set_for_current(tailer_core);
            for i in 1..=rounds {
                while ping.load(Ordering::Acquire) != i {
                    std::hint::spin_loop();
                }
                pong.store(i, Ordering::Release);
            }
        })
    };
    core_affinity::set_for_current(writer_core);
    let mut floor = histogram();
    for i in 1..=rounds {
        let t = now_ns();
        ping.store(i, Ordering::Release);
        while pong.load(Ordering::Acquire) != i {
            std::hint::spin_loop();
        }
        floor.saturating_record((now_ns() - t) / 2);
    }
    echo.join().expect("echo thread");
    println!(
        "| floor: cache-line one way (round trip / 2), two threads | {rounds} | {} |",
        percentiles(&floor)
    );

    // Two threads, then two processes (this binary re-executed as the tailer), for each wait
    // strategy: busy-spinning is the figure to set next to the cache-line floor, the default
    // backoff what a CPU-friendly tailer gets.
    let count = plan.tail_messages;
    // Two cores hold the writer and the tailer, both spinning: the background thread that
    // prepares segments can only run by preempting one of them, so the writer pre-faults in
    // its own idle time (`Pretouch::OnIdle`); the last row shows the default for comparison.
    let runs = [
        ("BusySpin", false, Pretouch::OnIdle),
        ("BusySpin", true, Pretouch::OnIdle),
        ("Backoff", false, Pretouch::OnIdle),
        ("BusySpin", false, Pretouch::Background),
    ];
    for (wait, processes, pretouch) in runs {
        let dir = root.join(format!("tail-{wait}-{processes}-{pretouch:?}"));
        fs::create_dir_all(&dir).expect("dir");
        let label = format!(
            "journal writer (Pretouch::{pretouch:?}) -> Tailer (TailerWait::{wait}), two {}",
            if processes { "processes" } else { "threads" }
        );
        if processes {
            let mut child = Command::new(std::env::current_exe().expect("current exe"))
                .env(TAILER_CHILD, &dir)
                .env(TAILER_COUNT, count.to_string())
                .env(TAILER_CORE, tailer_core.id.to_string())
                .env(TAILER_WAIT, wait)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn tailer process");
            let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
            assert_eq!(lines.next().expect("ready line").expect("read"), "ready");
            paced_writer(&dir, plan, count, pretouch);
            let result = lines.next().expect("result line").expect("read");
            child.wait().expect("tailer process");
            let v: Vec<u64> = result
                .split(' ')
                .map(|x| x.parse().expect("number"))
                .collect();
            println!(
                "| {label} | {count} | {} | {} | {} | {} | {} |",
                ns(v[0]),
                ns(v[1]),
                ns(v[2]),
                ns(v[3]),
                ns(v[4])
            );
        } else {
            let mut tailer = Tailer::open(&dir, 0)
                .expect("tailer")
                .wait(tailer_wait(wait));
            let reader = std::thread::spawn(move || {
                core_affinity::set_for_current(tailer_core);
                tail_into(&mut tailer, count)
            });
            paced_writer(&dir, plan, count, pretouch);
            let h = reader.join().expect("tailer thread");
            println!("| {label} | {count} | {} |", percentiles(&h));
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
