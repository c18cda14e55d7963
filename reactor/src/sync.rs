//! The concurrency shim of the direct-egress protocol ([`crate::direct`]) and the loop's
//! wake handshake ([`crate::waker`]): their atomics, fences, `UnsafeCell` and spin yields
//! come from here.
//!
//! Normally these are `std`'s; built with `RUSTFLAGS="--cfg loom"` they are loom's, so the
//! models in `reactor/tests/loom_direct.rs` see every shared access of the protocol. The
//! rest of the loop (its stop flag, its stats) is not modelled and uses `std` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicU64, Ordering};

/// Gives up the rest of the time slice (under loom: lets the thread being waited for run).
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// `UnsafeCell` with loom's `with` / `with_mut` API, so that loom checks every access and
/// a normal build compiles it to a plain pointer.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

#[cfg(not(loom))]
#[derive(Debug)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    #[inline(always)]
    pub(crate) const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Runs `f` with an exclusive pointer to the value.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}
