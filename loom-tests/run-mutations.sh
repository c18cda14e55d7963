#!/usr/bin/env bash
# Mutation tests for the loom models: evidence that each model catches the bug it claims to.
#
# For each deliberate bug of the ring (`--cfg peregrine_mutation="NAME"`, see
# ring/src/sync.rs `mutation`), builds the models with that bug switched on and runs the
# models that guard against it. Under that cfg those models are `should_panic`, so a passing
# test means the model failed, as it must; a failing test means the mutation survived.
#
# Usage: loom-tests/run-mutations.sh [NAME...]   (default: every mutation)
# Each mutation builds in its own target/mutation-NAME, so reruns are incremental. Logs are
# kept in target/mutation-NAME/run.log. Exits non-zero if any mutation survived.
set -uo pipefail
cd "$(dirname "$0")/.."

# mutation -> the models (test names) that must fail under it
declare -A MODELS=(
    [sequence_relaxed]="single_producer_wraps_without_overwriting stamped_single_producer_wraps_without_overwriting"
    [no_gating]="single_producer_wraps_without_overwriting stamped_single_producer_wraps_without_overwriting a_side_cell_written_by_one_stage_is_read_by_its_dependent"
    [skip_availability]="multi_producer_never_reads_unpublished"
    [batch_per_slot]="batch_publish_is_all_or_nothing stamped_backlog_of_batches_is_seen_in_whole_batches"
    [stamp_in_order]="stamped_batch_publish_is_all_or_nothing stamped_backlog_of_batches_is_seen_in_whole_batches"
    [stamp_relaxed]="stamped_single_producer_wraps_without_overwriting"
    [barrier_ignores_deps]="gated_stage_never_overtakes_its_dependency a_side_cell_written_by_one_stage_is_read_by_its_dependent"
    [notifier_no_fence]="blocking_notifier_loses_no_wakeup blocking_ring_loses_no_wakeup stamped_blocking_ring_loses_no_wakeup"
    [close_no_recheck]="close_racing_publish_drains_everything stamped_close_racing_publish_drains_everything last_producer_drop_drains_stage shutdown_racing_publish_drains_and_releases shutdown_racing_last_producer_drop"
    [pool_early_release]="each_event_goes_to_exactly_one_worker"
    [halt_ignored]="halt_releases_blocked_producer failure_policy_halt_releases_blocked_producer shutdown_racing_publish_drains_and_releases shutdown_racing_last_producer_drop"
)
ORDER=(sequence_relaxed no_gating skip_availability batch_per_slot stamp_in_order stamp_relaxed barrier_ignores_deps
    notifier_no_fence close_no_recheck halt_ignored pool_early_release)

if [ $# -gt 0 ]; then
    ORDER=("$@")
fi

# Eight release builds on a small machine: thin LTO and one codegen unit buy nothing for a
# model checker's run time, so drop them here (the models' own run is unchanged).
export CARGO_PROFILE_RELEASE_LTO=false
export CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
export CARGO_TERM_COLOR=never

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

rows=()
survived=0
for name in "${ORDER[@]}"; do
    models=${MODELS[$name]:-}
    if [ -z "$models" ]; then
        echo "unknown mutation: $name" >&2
        exit 2
    fi
    dir="target/mutation-$name"
    mkdir -p "$dir"
    log="$dir/run.log"
    export RUSTFLAGS="--cfg loom -C debug-assertions --cfg peregrine_mutation=\"$name\""
    export CARGO_TARGET_DIR="$dir"
    echo "=== $name: building" >&2
    t0=$(now)
    if ! cargo test -p peregrine-loom-tests --release --no-run >"$log" 2>&1; then
        echo "build failed for $name; see $log" >&2
        tail -20 "$log" >&2
        exit 2
    fi
    t1=$(now)
    echo "=== $name: running $models" >&2
    # shellcheck disable=SC2086 # one argument per model name
    cargo test -p peregrine-loom-tests --release -- --exact --test-threads 1 --nocapture $models \
        >>"$log" 2>&1
    rc=$?
    t2=$(now)
    expected=$(wc -w <<<"$models")
    passed=$(sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' "$log" | awk '{ s += $1 } END { print s + 0 }')
    if [ "$rc" -eq 0 ] && [ "$passed" -eq "$expected" ]; then
        verdict="caught"
    else
        verdict="SURVIVED"
        survived=1
    fi
    # The first failure loom (or an assertion) reported, as evidence of why.
    why=$(grep -m1 -A1 'panicked at' "$log" | tail -n1 | cut -c1-90)
    rows+=("$(printf '%-22s %-9s %8ss %8ss  %s\n%36s%s' "$name" "$verdict" "$(secs "$t0" "$t1")" \
        "$(secs "$t1" "$t2")" "$models" "" "first failure: ${why:-none}")")
done

printf '\n%-22s %-9s %9s %9s  %s\n' mutation verdict build run "models expected to fail"
printf '%s\n' "${rows[@]}"
if [ "$survived" -ne 0 ]; then
    echo "some mutation survived: a model does not catch the bug it claims to" >&2
fi
exit "$survived"
