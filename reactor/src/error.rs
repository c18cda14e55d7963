//! Errors, one small enum per operation, with stable lowercase messages.

use thiserror::Error;

/// Why a loop could not be set up or stopped with an error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReactorError {
    /// Binding or configuring the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Creating the backend (epoll, eventfd) failed.
    #[error("cannot create the event loop: {0}")]
    Backend(std::io::Error),
    /// Waiting for events failed; the loop stopped.
    #[error("event loop wait failed: {0}")]
    Wait(std::io::Error),
    /// The loop's thread could not be started.
    #[error("cannot start the loop thread: {0}")]
    Spawn(std::io::Error),
    /// The loop's thread panicked.
    #[error("the loop thread panicked")]
    Panicked,
}
