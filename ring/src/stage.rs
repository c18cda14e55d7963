//! The stage loop: the batch event processor of the LMAX Disruptor, one per thread.

use crate::handler::EventHandler;
use crate::reader::{Reader, Ready, Sink};
use crate::sequencer::Sequencer;

/// Runs `handler` until the ring drains or halts.
pub(crate) fn run<E, S: Sequencer, H: EventHandler<E>>(mut reader: Reader<E, S>, mut handler: H) {
    handler.on_start();
    loop {
        // Fast path: events already there and no halt; one relaxed flag load per batch.
        let mut end = reader.available();
        if end <= reader.next || reader.core.is_halted() {
            match reader.wait() {
                Ok(Ready::Events(e)) if !reader.core.is_halted() => end = e,
                Ok(Ready::Events(_)) | Ok(Ready::Halted) | Ok(Ready::Drained) => break,
                Err(_) => {
                    handler.on_timeout(reader.next);
                    continue;
                }
            }
        }
        reader.handle(end, &mut HandlerSink(&mut handler));
    }
    handler.on_shutdown();
}

/// A stage handler as a [`Sink`].
struct HandlerSink<'a, H>(&'a mut H);

impl<E, H: EventHandler<E>> Sink<E> for HandlerSink<'_, H> {
    #[inline(always)]
    fn batch_start(&mut self, size: u64, depth: u64) {
        self.0.on_batch_start(size, depth);
    }
    #[inline(always)]
    fn event(&mut self, event: &E, sequence: u64, end_of_batch: bool) {
        self.0.on_event(event, sequence, end_of_batch);
    }
}
