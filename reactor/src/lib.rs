//! Network event loop feeding the ring (work in progress).
