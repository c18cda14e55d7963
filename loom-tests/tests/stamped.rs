//! loom models of the stamped single-producer ring (`single_producer_stamped`): the slot
//! stamps that publish one event at a time, the batch stamp written after the cursor that
//! keeps a batch all-or-nothing, the cursor read behind a backlog, and the waits and the
//! close that look at stamps instead of the cursor.
//!
//! As in `models.rs`, each model names the deliberate bugs it catches and is
//! `should_panic` under them (`run-mutations.sh` runs it so).
#![cfg(loom)]

use peregrine_loom_tests::scenarios;
use peregrine_ring::{single_producer_stamped, RingBuilder, Stamped};

/// A stamped ring of `u64` with `capacity` slots.
fn stamped(capacity: usize) -> RingBuilder<u64, Stamped> {
    single_producer_stamped(capacity, || 0u64).unwrap()
}

/// Two slots, three events one by one: the producer wraps and waits for the consumer,
/// which finds each event by its slot's stamp.
///
/// Property: the consumer sees exactly the events published, in order, each with its own
/// sequence, and every slot read happens after the write that filled it.
///
/// Breaks under `stamp_relaxed` (the stamp publishes the event without its write: loom
/// reports the unsynchronised slot read), `sequence_relaxed` (the producer reuses a slot
/// the consumer is still reading) and `no_gating`.
#[test]
#[cfg_attr(
    any(
        peregrine_mutation = "stamp_relaxed",
        peregrine_mutation = "sequence_relaxed",
        peregrine_mutation = "no_gating"
    ),
    should_panic
)]
fn stamped_single_producer_wraps_without_overwriting() {
    scenarios::wraps_without_overwriting(stamped);
}

/// Two batches of two through two slots: the consumer finds each batch by the stamp of its
/// first slot, which the producer writes after moving the cursor past the batch, and takes
/// the batch's end from the cursor.
///
/// Property: a batch becomes visible all at once, and each event reads as written.
///
/// Breaks under `stamp_in_order` (the first slot stamped before the cursor moves: a
/// consumer that finds it reads a cursor short of the batch's end).
#[test]
#[cfg_attr(peregrine_mutation = "stamp_in_order", should_panic)]
fn stamped_batch_publish_is_all_or_nothing() {
    scenarios::batches_are_all_or_nothing(stamped, 2, 2);
}

/// Two batches of two through four slots: the consumer can find the second batch stamped
/// behind the first and read the cursor for the whole backlog.
///
/// Property: as above, on the path where the end of a backlog comes from the cursor.
///
/// Breaks under `batch_per_slot` (the cursor stops inside the second batch) and
/// `stamp_in_order`.
#[test]
#[cfg_attr(
    any(
        peregrine_mutation = "batch_per_slot",
        peregrine_mutation = "stamp_in_order"
    ),
    should_panic
)]
fn stamped_backlog_of_batches_is_seen_in_whole_batches() {
    scenarios::batches_are_all_or_nothing(stamped, 4, 2);
}

/// A consumer parked by the blocking strategy, which looks at the next slot's stamp when
/// woken, and a producer publishing three events into two slots, then dropped (closing the
/// ring) once the consumer has everything.
///
/// Property: no wake-up is lost (loom reports a deadlock if the consumer parks for good),
/// every event arrives in order, and the drained ring reports `Drained`.
///
/// Breaks under `notifier_no_fence` (a publish between the consumer's last look and its
/// park is missed).
#[test]
#[cfg_attr(peregrine_mutation = "notifier_no_fence", should_panic)]
fn stamped_blocking_ring_loses_no_wakeup() {
    scenarios::blocking_ring_loses_no_wakeup(stamped);
}

/// The last producer drops (closing the ring) right after publishing, racing with a
/// polling consumer.
///
/// Property: the consumer reports `Drained` only after handling every event published
/// before the close: all three arrive, in order.
///
/// Breaks under `close_no_recheck` (the consumer stops as soon as it sees the ring closed,
/// without a last look, and loses the events published just before).
#[test]
#[cfg_attr(peregrine_mutation = "close_no_recheck", should_panic)]
fn stamped_close_racing_publish_drains_everything() {
    scenarios::close_racing_publish_drains(stamped);
}
