//! Framing of the control channel between agent and worker, shared by both sides.
//!
//! A frame is a 4-byte big-endian length `N`, then `N` bytes: one protocol-version byte
//! and `N - 1` bytes of JSON. The length is checked against [`MAX_FRAME`] before any
//! buffer is reserved, so a corrupt or hostile peer can cost at most one frame of memory.
//! Decoding never panics: every malformed input is a [`FrameError`].

#[cfg(test)]
mod fixture_tests;
#[cfg(test)]
mod fuzz_tests;
mod messages;
#[cfg(test)]
mod tests;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use messages::{
    AgentMsg, DumpFormat, DumpKind, MIN_REPORT_EVERY_MS, PUSHED_SEQ, Runtime, WorkerMsg,
};

/// Version byte carried by every frame. Bumped on incompatible message changes.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest accepted `N` (version byte plus body). Metrics text is the largest message.
pub const MAX_FRAME: usize = 4 * 1024 * 1024;
const HEADER_LEN: usize = 4;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME`]. The stream cannot be resynchronised.
    #[error("frame length {len} exceeds the maximum of {MAX_FRAME} bytes")]
    Oversized { len: usize },
    /// A zero length prefix: no version byte follows.
    #[error("empty frame without a version byte")]
    Empty,
    #[error("frame has protocol version {got}, expected {PROTOCOL_VERSION}")]
    BadVersion { got: u8 },
    #[error("frame body is not a valid message: {0}")]
    Malformed(String),
    /// The stream ended inside a frame.
    #[error("stream ended with {buffered} bytes of an incomplete frame")]
    Truncated { buffered: usize },
}

impl FrameError {
    /// Whether the stream is unusable after this error (frame boundaries are lost).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FrameError::Oversized { .. } | FrameError::Truncated { .. }
        )
    }
}

/// Encodes one message as a complete frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = body.len() + 1;
    if len > MAX_FRAME {
        return Err(FrameError::Oversized { len });
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + len);
    // len <= MAX_FRAME < u32::MAX, so the cast is exact.
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Total size (header included) of the frame at the front of `buf`, once its header is in.
fn frame_total_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*header) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::Oversized { len });
    }
    Ok(Some(HEADER_LEN + len))
}

/// Decodes one complete frame, header included (as [`FrameDecoder::next_raw`] returns it).
pub fn decode_raw<T: DeserializeOwned>(frame: &[u8]) -> Result<T, FrameError> {
    let payload = frame.get(HEADER_LEN..).unwrap_or_default();
    let Some((&version, body)) = payload.split_first() else {
        return Err(FrameError::Empty);
    };
    if version != PROTOCOL_VERSION {
        return Err(FrameError::BadVersion { got: version });
    }
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Decodes the frame at the front of `buf`: `Ok(None)` while it is incomplete, else the
/// message and how many bytes it took.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(total) = frame_total_len(buf)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    decode_raw(frame).map(|msg| Some((msg, total)))
}

/// Incremental decoder for a byte stream: [`push`](Self::push) what was read, then call
/// [`next_frame`](Self::next_frame) until it returns `Ok(None)`.
///
/// A non-fatal error (empty, bad version, malformed body) consumes its frame, so decoding
/// continues with the next one. After [`FrameError::Oversized`] the decoder is poisoned:
/// it drops its buffer, ignores further input and keeps returning that error.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    poisoned: Option<usize>,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends bytes read from the stream. Capacity grows by doubling but never past one
    /// maximal frame unless a single push is itself larger.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.poisoned.is_some() {
            return;
        }
        let needed = self.buf.len() + bytes.len();
        if needed > self.buf.capacity() {
            let target = needed.max((self.buf.capacity() * 2).min(HEADER_LEN + MAX_FRAME));
            self.buf.reserve_exact(target - self.buf.len());
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        match self.next_raw()? {
            Some(frame) => decode_raw(&frame).map(Some),
            None => Ok(None),
        }
    }

    /// The next complete frame as bytes (length prefix included), for a caller that
    /// decodes it elsewhere, e.g. a large one off an async runtime's thread with
    /// [`decode_raw`]. `Ok(None)` when more bytes are needed.
    pub fn next_raw(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if let Some(len) = self.poisoned {
            return Err(FrameError::Oversized { len });
        }
        let total = match frame_total_len(&self.buf) {
            Ok(Some(total)) => total,
            Ok(None) => return Ok(None),
            Err(error) => {
                if let FrameError::Oversized { len } = error {
                    self.poisoned = Some(len);
                }
                self.buf = Vec::new();
                return Err(error);
            }
        };
        if self.buf.len() < total {
            // Safe to reserve now: `total` was checked against MAX_FRAME above.
            self.buf.reserve_exact(total - self.buf.len());
            return Ok(None);
        }
        let frame = if self.buf.len() == total {
            // The whole buffer is this frame: hand it over instead of copying it.
            std::mem::take(&mut self.buf)
        } else {
            let frame = self.buf[..total].to_vec();
            self.buf.drain(..total);
            frame
        };
        if self.buf.is_empty() && self.buf.capacity() > 1024 * 1024 {
            // Give back the memory of one large frame rather than keep it for good.
            self.buf = Vec::new();
        }
        Ok(Some(frame))
    }

    /// Call at end of stream: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            buffered => Err(FrameError::Truncated { buffered }),
        }
    }

    /// Bytes of buffer currently allocated (for tests and diagnostics).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }
}
