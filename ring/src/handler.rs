//! Handlers: what a stage runs for each event.
//!
//! - [`EventHandler`]: infallible; a closure `FnMut(&E, u64, bool)` is one.
//! - [`TryEventHandler`]: returns a `Result`; a closure `FnMut(&E, u64, bool) ->
//!   Result<(), Err>` is one. Added with
//!   [`RingBuilder::try_stage`](crate::RingBuilder::try_stage). A returned error and a
//!   panic (from either kind) both go to the stage's [`FailurePolicy`](crate::FailurePolicy).
//! - [`ExclusiveHandler`]: receives `&mut E`; only for a stage that is alone with the event
//!   (see [`RingBuilder::exclusive_stage`](crate::RingBuilder::exclusive_stage)).

use std::convert::Infallible;

/// A boxed error, as stored by failure policies and dead-letter sinks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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

/// A handler whose `on_event` may fail; the failure goes to the stage's
/// [`FailurePolicy`](crate::FailurePolicy). Hooks as in [`EventHandler`].
///
/// ```
/// use peregrine_ring::{single_producer, FailurePolicy, WaitStrategy};
///
/// let mut b = single_producer(8, || 0u64)?.wait_strategy(WaitStrategy::blocking());
/// b.try_stage("parse", |e: &u64, _seq: u64, _end: bool| {
///     if *e == 0 { Err("zero is not an order") } else { Ok(()) }
/// })
/// .on_failure(FailurePolicy::LogAndContinue)
/// .add()?;
/// # let (_p, _r) = b.build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait TryEventHandler<E>: Send + 'static {
    /// The error `on_event` returns.
    type Error: Into<BoxError>;

    /// Handles the event at `sequence`.
    ///
    /// # Errors
    ///
    /// Whatever the handler decides; the stage's failure policy decides what happens next.
    fn on_event(&mut self, event: &E, sequence: u64, end_of_batch: bool)
        -> Result<(), Self::Error>;

    /// See [`EventHandler::on_batch_start`].
    #[inline(always)]
    fn on_batch_start(&mut self, batch_size: u64, queue_depth: u64) {
        let _ = (batch_size, queue_depth);
    }

    /// See [`EventHandler::on_start`].
    fn on_start(&mut self) {}

    /// See [`EventHandler::on_shutdown`].
    fn on_shutdown(&mut self) {}

    /// See [`EventHandler::on_timeout`].
    fn on_timeout(&mut self, sequence: u64) {
        let _ = sequence;
    }
}

impl<E, F, Err> TryEventHandler<E> for F
where
    F: FnMut(&E, u64, bool) -> Result<(), Err> + Send + 'static,
    Err: Into<BoxError>,
{
    type Error = Err;

    #[inline(always)]
    fn on_event(&mut self, event: &E, sequence: u64, end_of_batch: bool) -> Result<(), Err> {
        self(event, sequence, end_of_batch)
    }
}

/// A handler that may write the event in place: LMAX's unmarshaller filling in a field
/// that later stages read. Hooks as in [`EventHandler`].
///
/// A closure `FnMut(&mut E, u64, bool)` is one.
pub trait ExclusiveHandler<E>: Send + 'static {
    /// The error `on_event` returns ([`Infallible`] for closures).
    type Error: Into<BoxError>;

    /// Handles (and may modify) the event at `sequence`.
    ///
    /// # Errors
    ///
    /// Whatever the handler decides; the stage's failure policy decides what happens next.
    fn on_event(
        &mut self,
        event: &mut E,
        sequence: u64,
        end_of_batch: bool,
    ) -> Result<(), Self::Error>;

    /// See [`EventHandler::on_batch_start`].
    #[inline(always)]
    fn on_batch_start(&mut self, batch_size: u64, queue_depth: u64) {
        let _ = (batch_size, queue_depth);
    }

    /// See [`EventHandler::on_start`].
    fn on_start(&mut self) {}

    /// See [`EventHandler::on_shutdown`].
    fn on_shutdown(&mut self) {}

    /// See [`EventHandler::on_timeout`].
    fn on_timeout(&mut self, sequence: u64) {
        let _ = sequence;
    }
}

impl<E, F> ExclusiveHandler<E> for F
where
    F: FnMut(&mut E, u64, bool) + Send + 'static,
{
    type Error = Infallible;

    #[inline(always)]
    fn on_event(
        &mut self,
        event: &mut E,
        sequence: u64,
        end_of_batch: bool,
    ) -> Result<(), Infallible> {
        self(event, sequence, end_of_batch);
        Ok(())
    }
}
