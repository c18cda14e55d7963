//! Framing: the [`Codec`] trait and the default [`LengthPrefixed`] codec with its
//! [`Frame`] slot type.

use thiserror::Error;

/// Identifies one connection of one loop for the connection's lifetime: an index into
/// the loop's table and a generation, so a response addressed to a closed connection is
/// never delivered to the connection that reuses its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ConnId(pub u64);

impl ConnId {
    /// No connection (the value of a fresh [`Frame`]).
    pub const NONE: ConnId = ConnId(u64::MAX);

    pub(crate) fn new(index: usize, generation: u32) -> Self {
        ConnId(((generation as u64) << 32) | index as u64)
    }

    pub(crate) fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    pub(crate) fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Why the bytes at the head of a connection's buffer are not a valid frame.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The frame announces more bytes than the connection may send in one frame.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// Announced length (header included).
        len: usize,
        /// The limit ([`Config::max_frame`](crate::Config::max_frame)).
        max: usize,
    },
    /// The bytes break the framing rules.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Turns a byte stream into ring events and ring events back into bytes.
///
/// The loop calls [`frame_len`](Self::frame_len) on the bytes buffered for a connection;
/// only once a whole frame is there does it claim a ring slot and call
/// [`decode`](Self::decode) to write the frame straight into the slot. On the way out it
/// asks each egress event for its [`destination`](Self::destination) and
/// [`encode`](Self::encode)s it onto that connection's pending bytes.
pub trait Codec: Send + 'static {
    /// The ingress ring's slot type.
    type In: Send + Sync + 'static;
    /// The egress ring's slot type.
    type Out: Send + Sync + 'static;

    /// The length of the frame at the head of `buf`, if it is complete.
    ///
    /// # Errors
    ///
    /// A [`FrameError`] closes the connection with the matching
    /// [`CloseReason`](crate::CloseReason).
    fn frame_len(&mut self, buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError>;

    /// Writes the complete frame `frame` from connection `conn` into the claimed `slot`.
    fn decode(&mut self, conn: ConnId, frame: &[u8], slot: &mut Self::In);

    /// The connection an egress event goes to.
    fn destination(&self, event: &Self::Out) -> ConnId;

    /// Appends the wire form of `event` to `out`.
    fn encode(&mut self, event: &Self::Out, out: &mut Vec<u8>);

    /// A second encoder (a copy of this codec) and an empty egress event, for an
    /// [`Egress`](crate::Egress) to encode responses on its own thread and write them
    /// straight to idle connections instead of waking the loop. `None` (the default)
    /// sends every response through the loop.
    fn egress_encoder(&self) -> Option<(Self, Self::Out)>
    where
        Self: Sized,
    {
        None
    }
}

/// A frame's payload and its connection: the slot type of [`LengthPrefixed`].
///
/// Preallocate slots with [`Frame::with_capacity`] (the ring's factory) at the loop's
/// maximum frame size: then decoding into a slot never allocates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The connection it came from (ingress) or goes to (egress).
    pub conn: ConnId,
    /// The payload, without the length header.
    pub payload: Vec<u8>,
}

impl Default for Frame {
    fn default() -> Self {
        Self {
            conn: ConnId::NONE,
            payload: Vec::new(),
        }
    }
}

impl Frame {
    /// An empty frame whose payload can hold `capacity` bytes without allocating.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            conn: ConnId::NONE,
            payload: Vec::with_capacity(capacity),
        }
    }

    /// Replaces the content (reusing the payload's allocation).
    pub fn set(&mut self, conn: ConnId, payload: &[u8]) {
        self.conn = conn;
        self.payload.clear();
        self.payload.extend_from_slice(payload);
    }
}

/// The default framing: a `u32` little-endian payload length, then the payload.
///
/// A zero length is [`FrameError::Malformed`] (nothing legitimate sends empty frames,
/// and it catches streams that are not this protocol); a frame whose header plus payload
/// exceeds the limit is [`FrameError::Oversized`], detected from the header alone.
#[derive(Debug, Clone, Copy, Default)]
pub struct LengthPrefixed;

/// Bytes in a [`LengthPrefixed`] header.
pub const HEADER_LEN: usize = 4;

impl LengthPrefixed {
    /// Appends `payload` as one frame to `out` (for clients and tests).
    ///
    /// # Panics
    ///
    /// If `payload` is longer than `u32::MAX` bytes.
    pub fn write_frame(payload: &[u8], out: &mut Vec<u8>) {
        let len = u32::try_from(payload.len()).expect("payload longer than u32::MAX");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
    }
}

impl Codec for LengthPrefixed {
    type In = Frame;
    type Out = Frame;

    #[inline]
    fn frame_len(&mut self, buf: &[u8], max_frame: usize) -> Result<Option<usize>, FrameError> {
        let Some(header) = buf.get(..HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(header.try_into().expect("four bytes")) as usize;
        if len == 0 {
            return Err(FrameError::Malformed("zero-length frame"));
        }
        let total = HEADER_LEN + len;
        if total > max_frame {
            return Err(FrameError::Oversized {
                len: total,
                max: max_frame,
            });
        }
        Ok((buf.len() >= total).then_some(total))
    }

    #[inline]
    fn decode(&mut self, conn: ConnId, frame: &[u8], slot: &mut Frame) {
        slot.set(conn, &frame[HEADER_LEN..]);
    }

    #[inline]
    fn destination(&self, event: &Frame) -> ConnId {
        event.conn
    }

    #[inline]
    fn encode(&mut self, event: &Frame, out: &mut Vec<u8>) {
        Self::write_frame(&event.payload, out);
    }

    fn egress_encoder(&self) -> Option<(Self, Frame)> {
        Some((LengthPrefixed, Frame::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixed_waits_for_a_whole_frame() {
        let mut codec = LengthPrefixed;
        let mut wire = Vec::new();
        LengthPrefixed::write_frame(b"abc", &mut wire);
        for cut in 0..wire.len() {
            assert_eq!(codec.frame_len(&wire[..cut], 64), Ok(None), "cut at {cut}");
        }
        assert_eq!(codec.frame_len(&wire, 64), Ok(Some(7)));
        let mut slot = Frame::with_capacity(8);
        codec.decode(ConnId(3), &wire, &mut slot);
        assert_eq!((slot.conn, &slot.payload[..]), (ConnId(3), &b"abc"[..]));
    }

    #[test]
    fn length_prefixed_rejects_empty_and_oversized_frames_from_the_header() {
        let mut codec = LengthPrefixed;
        assert_eq!(
            codec.frame_len(&[0, 0, 0, 0], 64),
            Err(FrameError::Malformed("zero-length frame"))
        );
        assert_eq!(
            codec.frame_len(&61u32.to_le_bytes(), 64),
            Err(FrameError::Oversized { len: 65, max: 64 })
        );
        assert_eq!(codec.frame_len(&60u32.to_le_bytes(), 64), Ok(None));
    }

    #[test]
    fn conn_ids_carry_index_and_generation() {
        let id = ConnId::new(7, 9);
        assert_eq!((id.index(), id.generation()), (7, 9));
        assert_ne!(id, ConnId::new(7, 10));
    }
}
