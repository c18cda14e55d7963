//! [`EventHandler`]: what a stage runs for each event.

/// Handles events for one stage, on the stage's own thread.
///
/// Only [`on_event`](EventHandler::on_event) is required. A closure
/// `FnMut(&E, u64, bool)` is a handler too.
///
/// Calls arrive in this order: `on_start` once; then for each batch `on_batch_start`
/// followed by `on_event` for each event of the batch (the last with `end_of_batch`);
/// `on_timeout` when the ring's [wait strategy](crate::WaitStrategy::with_timeout) has a
/// timeout and no event came within it; `on_shutdown` once when the stage drains or halts.
pub trait EventHandler<E>: Send + 'static {
    /// Handles the event at `sequence`. `end_of_batch` is true for the last event of the
    /// batch available now: the moment to flush buffered work (LMAX's "smart batching").
    fn on_event(&mut self, event: &E, sequence: u64, end_of_batch: bool);

    /// A batch of `batch_size` events is about to be handled; `queue_depth` events are
    /// ready in all (more than `batch_size` when a maximum batch size applies).
    #[inline(always)]
    fn on_batch_start(&mut self, batch_size: u64, queue_depth: u64) {
        let _ = (batch_size, queue_depth);
    }

    /// Called once on the stage thread before the first event.
    fn on_start(&mut self) {}

    /// Called once on the stage thread after the last event.
    fn on_shutdown(&mut self) {}

    /// The stage waited for the wait strategy's timeout without an event; `sequence` is the
    /// next sequence it expects.
    fn on_timeout(&mut self, sequence: u64) {
        let _ = sequence;
    }
}

impl<E, F> EventHandler<E> for F
where
    F: FnMut(&E, u64, bool) + Send + 'static,
{
    #[inline(always)]
    fn on_event(&mut self, event: &E, sequence: u64, end_of_batch: bool) {
        self(event, sequence, end_of_batch)
    }
}
