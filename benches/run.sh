#!/usr/bin/env bash
# Runs the benchmark suite (throughput, latency, journal, engine, reactor echo) and writes
# BENCHMARKS.md: the
# machine, the date, the command, and every figure as an absolute value and as a ratio to
# the best peer and to the floor measured in the same run.
#
#   benches/run.sh            # full run (about a quarter of an hour on 2 cores)
#   benches/run.sh --quick    # a minute or two; same tables, fewer samples
#   benches/run.sh --output /tmp/B.md
#
# The benches append tab-separated result lines to $PEREGRINE_BENCH_OUT; criterion's
# estimates go under $CRITERION_HOME; both live in a temporary folder for this run only.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
output=BENCHMARKS.md
for arg in "$@"; do
    case "$arg" in
        --quick) quick=(--quick) ;;
        --output=*) output="${arg#--output=}" ;;
        --output) echo "use --output=FILE" >&2; exit 2 ;;
        *) echo "usage: benches/run.sh [--quick] [--output=FILE]" >&2; exit 2 ;;
    esac
done
command_line="benches/run.sh${quick:+ --quick}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
export PEREGRINE_BENCH_OUT="$work/results.tsv"
export CRITERION_HOME="$work/criterion"
: >"$PEREGRINE_BENCH_OUT"
printf 'load-start\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$PEREGRINE_BENCH_OUT"

bench() {
    local name="$1" package="${2:-peregrine-benches}"
    echo "=== $name ($(date -u +%H:%M:%S))" >&2
    local started=$SECONDS
    if cargo bench -p "$package" --bench "$name" -- ${quick[@]+"${quick[@]}"} \
        >"$work/$name.out" 2>"$work/$name.err"; then
        echo "$name: $((SECONDS - started)) s" >&2
        printf 'bench-time\t%s\t%s\n' "$name" "$((SECONDS - started))" >>"$PEREGRINE_BENCH_OUT"
    else
        echo "$name: FAILED after $((SECONDS - started)) s; stderr tail:" >&2
        tail -n 20 "$work/$name.err" >&2
        printf 'bench-failed\t%s\n' "$name" >>"$PEREGRINE_BENCH_OUT"
    fi
    cat "$work/$name.out" >&2
}

cargo bench -p peregrine-benches -p peregrine-reactor --no-run >&2
bench throughput
bench latency
bench journal
bench engine
bench echo peregrine-reactor

python3 - "$work" "$output" "$command_line" <<'PY'
import json, os, platform, re, subprocess, sys, datetime

work, output, command = sys.argv[1], sys.argv[2], sys.argv[3]
crit = os.path.join(work, "criterion")
lines = [l.rstrip("\n").split("\t") for l in open(os.path.join(work, "results.tsv")) if l.strip()]

def cpu_model():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                return l.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"

out = []
w = out.append
w("# Benchmarks\n")
w("Produced by `benches/run.sh`; regenerate with the command below. Every figure is compared "
  "with a peer or a floor measured in the same run, on the same machine: the absolute numbers "
  "move with the machine and its load, the ratios are what to read.\n")
w("| | |\n|---|---|")
w(f"| command | `{command}` |")
w(f"| date (UTC) | {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')} |")
w(f"| CPU | {cpu_model()} |")
w(f"| cores | {os.cpu_count()} online, {len(os.sched_getaffinity(0))} allowed |")
w(f"| kernel | {platform.system()} {sh('uname', '-r')} |")
w(f"| rustc | {sh('rustc', '--version')} |")
load_start = next((l[1] for l in lines if l[0] == "load-start"), "?")
load_end = " ".join(open("/proc/loadavg").read().split()[:3])
w(f"| load average (1, 5, 15 min) | {load_start} at the start, {load_end} at the end |")
times = {l[1]: l[2] for l in lines if l[0] == "bench-time"}
failed = [l[1] for l in lines if l[0] == "bench-failed"]
w(f"| bench times | {', '.join(f'{k} {v} s' for k, v in times.items())} |")
if failed:
    w(f"| FAILED | {', '.join(failed)} |")
w("")
allowed = len(os.sched_getaffinity(0))
peak = max(float(x) for x in (load_start.split() + load_end.split()) if x.replace(".", "", 1).isdigit())
if peak > allowed / 2:
    w(f"**This machine was shared while the suite ran** (load average up to {peak:.1f} on "
      f"{allowed} allowed cores). Busy-spinning pairs then lose their cores to other processes "
      "for whole scheduler slices, which shows as throughput collapses and millisecond tails; "
      "ratios between peers can move by several times from one run to the next. Read the "
      "figures as one sample; rerun on an idle machine with at least one core per spinning "
      "thread before drawing conclusions.\n")

# ---------------------------------------------------------------- throughput
def estimate(group, peer):
    d = os.path.join(crit, group, peer, "new")
    try:
        est = json.load(open(os.path.join(d, "estimates.json")))
        bench = json.load(open(os.path.join(d, "benchmark.json")))
    except OSError:
        return None
    point = (est.get("slope") or est.get("mean"))["point_estimate"]
    thr = bench.get("throughput") or {}
    elements = thr.get("Elements") or thr.get("elements") or 1
    return point / elements  # ns per event

notes = {l[1]: l[2] for l in lines if l[0] == "throughput-note"}
skips = {}
for l in lines:
    if l[0] == "throughput-skip":
        skips.setdefault(l[1], []).append((l[2], l[3]))
peers = ["peregrine", "peregrine-stamped", "disruptor", "rtrb", "crossbeam-arrayqueue", "crossbeam-channel", "std-mpsc"]
results = {}

w("## Throughput\n")
w("`cargo bench -p peregrine-benches --bench throughput`: events per second from one producer "
  "(or three) through the whole topology, end to end (criterion slope estimate). "
  "*vs best* is the throughput over the best in the group; *peregrine ÷ this* is how many "
  "times faster peregrine is than that row. Queues run the same graph with one thread per "
  "stage and one queue per edge.\n")
base = estimate("base", "noop")
if base is not None:
    w(f"Harness overhead (`base/noop`, the same loop publishing into nothing): {base:.2f} ns per event.\n")
groups = list(notes) + [g for g in skips if g not in notes]
for group in groups:
    w(f"### {group}\n")
    w(f"{notes.get(group, '')}\n")
    rows = []
    for p in peers:
        ns = estimate(group, p)
        if ns is not None:
            rows.append((p, ns))
            results[(group, p)] = ns
    if rows:
        best = min(ns for _, ns in rows)
        pere = results.get((group, "peregrine"))
        w("| library | ns/event | M events/s | vs best | peregrine ÷ this |")
        w("|---|---|---|---|---|")
        for p, ns in rows:
            ratio = f"{ns / pere:.2f}x" if pere else "-"
            name = f"**{p}**" if p.startswith("peregrine") else p
            w(f"| {name} | {ns:.2f} | {1e3 / ns:.1f} | {best / ns:.2f} | {ratio} |")
    for p, reason in skips.get(group, []):
        w(f"\n{p}: skipped ({reason}).")
    w("")

# ---------------------------------------------------------------- latency
lat = {}
for l in lines:
    if l[0] == "latency":
        scen, peer = l[1], l[2]
        lat.setdefault(scen, {})[peer] = dict(zip(["p50", "p99", "p999", "p9999", "max", "n"], map(int, l[3:9])))
machine = [l for l in lines if l[0] == "latency-machine"]
w("## Latency\n")
w("`cargo bench -p peregrine-benches --bench latency`: HDR histograms, nanoseconds. The floor "
  "is two threads passing the value through one cache line per direction. Ping-pong times "
  "the round trip over two links; one-way sends on a fixed schedule and times each message "
  "from its intended send time (no coordinated omission), so any stall of either thread "
  "shows in the tail. *÷ floor* is the percentile over the floor's. The floor is a mailbox, "
  "not a queue: in the one-way run a value it overwrites while the receiver is descheduled "
  "is never recorded, so its tail (and sample count) is flattering.")
if machine:
    m = machine[0]
    w(f"The two threads are pinned to cores {m[2]}; `Instant::now()` costs {m[3]} ns here and is "
      "included once per sample.")
w("")
titles = {"ping-pong": "Ping-pong round trip", "one-way": "One-way at a fixed rate"}
floor_name = "floor (cache line)"
for scen, rows in lat.items():
    w(f"### {titles.get(scen, scen)}\n")
    fl = rows.get(floor_name)
    w("| channel | p50 | p99 | p99.9 | p99.99 | max | p50 ÷ floor | p99.9 ÷ floor | samples |")
    w("|---|---|---|---|---|---|---|---|---|")
    for peer, r in rows.items():
        f50 = f"{r['p50'] / fl['p50']:.2f}" if fl else "-"
        f999 = f"{r['p999'] / fl['p999']:.2f}" if fl else "-"
        name = f"**{peer}**" if peer.startswith("peregrine") else peer
        w(f"| {name} | {r['p50']} | {r['p99']} | {r['p999']} | {r['p9999']} | {r['max']} | {f50} | {f999} | {r['n']} |")
    w("")

# ---------------------------------------------------------------- targets
w("## Issue targets\n")
w("| target | measured | met |\n|---|---|---|")
def thr_ratio(group, peer):
    a, b = results.get((group, "peregrine")), results.get((group, peer))
    return None if a is None or b is None else b / a
def target(desc, value, ok, note="", status=None):
    if value is None:
        w(f"| {desc} | not measured | - |")
    else:
        w(f"| {desc} | {value} | {status or ('yes' if ok else '**no**')}{note} |")
r = thr_ratio("unicast_1p1c", "disruptor")
target("1P1C single publish >= 1.2x disruptor", r and f"{r:.2f}x", r is not None and r >= 1.2)
r = thr_ratio("unicast_1p1c", "rtrb")
target("1P1C single publish >= rtrb", r and f"{r:.2f}x", r is not None and r >= 1.0)
for b in (10, 100):
    r = thr_ratio(f"unicast_1p1c_batch{b}", "disruptor")
    target(f"1P1C batch of {b} >= 1.1x disruptor batch", r and f"{r:.2f}x", r is not None and r >= 1.1)
pp = lat.get("ping-pong", {})
# Both rings: the classic one and the stamped one built for one-event hand-offs.
for ring in ("peregrine", "peregrine-stamped"):
    if ring in pp and floor_name in pp:
        r = pp[ring]["p50"] / pp[floor_name]["p50"]
        target(f"ping-pong p50 within 10% of the floor ({ring})", f"{r:.2f}x floor", r <= 1.10)
    if ring in pp and "disruptor" in pp:
        a, b = pp[ring]["p999"], pp["disruptor"]["p999"]
        target(f"ping-pong p99.9 <= disruptor ({ring})", f"{a} ns vs {b} ns", a <= b)
r = results.get(("unicast_1p1c", "peregrine-stamped")), results.get(("unicast_1p1c", "disruptor"))
if None not in r:
    target("(for reference, not a target) 1P1C single publish, stamped ring vs disruptor",
           f"{r[1] / r[0]:.2f}x", True, status="-")
for g in ("pipeline_1p3c", "multicast_1p3c", "diamond_1p3c", "mp_3p1c"):
    r = thr_ratio(g, "disruptor")
    # The target holds where the machine has a core per busy thread; elsewhere the row is
    # measured with yielding waits and reported, not judged.
    over = "oversubscribed" in notes.get(g, "")
    target(f"{g} >= 1.2x disruptor, where the machine has a core per busy thread",
           r and f"{r:.2f}x" + (" (oversubscribed here, every peer yielding)" if over else ""),
           r is not None and r >= 1.2,
           status="not applicable here: " + notes[g].split(",")[0].replace("oversubscribed: ", "") if over else None)
w("")

# ---------------------------------------------------------------- journal
w("## Journal\n")
journal = os.path.join(work, "journal.out")
text = open(journal).read() if os.path.exists(journal) else ""
if "journal" in failed:
    w("The journal bench failed in this run; see the console output of `benches/run.sh`.\n")
elif "|" not in text:
    w("The journal bench printed no table in this run.\n")
else:
    w("`cargo bench -p peregrine-benches --bench journal`, as it printed it:\n")
    w(text.strip() + "\n")

# ------------------------------------------------------- engine and reactor (as printed)
def printed(name, title, command):
    path = os.path.join(work, name + ".out")
    text = open(path).read() if os.path.exists(path) else ""
    if name in failed:
        w(f"## {title}\n\nThe {name} bench failed in this run; see the console output of `benches/run.sh`.\n")
    elif "|" not in text:
        w(f"## {title}\n\nThe {name} bench printed no table in this run.\n")
    else:
        if not text.lstrip().startswith("## "):
            w(f"## {title}\n\n`{command}`, as it printed it:\n")
        w(text.strip() + "\n")

printed("engine", "Engine", "cargo bench -p peregrine-benches --bench engine")
printed("echo", "Reactor", "cargo bench -p peregrine-reactor --bench echo")

open(output, "w").write("\n".join(out).rstrip() + "\n")
print(f"wrote {output}", file=sys.stderr)
PY
