//! Reading one frame of the TCP store's protocol from a socket, for the server and the
//! client alike: the header, its length checked against the limit before anything is
//! allocated, then the body under a timeout. Over TLS as in clear: timeouts are set on
//! the socket underneath.

use std::io::{self, Read};
use std::time::Duration;

use super::codec::{frame_len, FRAME_HEADER_LEN};
use crate::transport::tls::Stream;

pub(super) enum FrameError {
    /// The peer closed (or reset) the connection between frames.
    Closed,
    /// No frame began within the header timeout (nothing of one was read).
    Idle,
    /// The announced body is longer than the frame limit; the body was not read.
    TooLong(usize),
    Io(io::Error),
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> FrameError {
        FrameError::Io(e)
    }
}

/// Reads one frame body. `header_timeout` bounds the wait for a frame to begin (`None`:
/// no bound; past it, [`FrameError::Idle`]); `body_timeout` bounds the rest once its header has begun, so a peer that
/// dies mid-frame cannot hold the reader.
pub(super) fn read_frame(
    r: &mut Stream,
    header_timeout: Option<Duration>,
    body_timeout: Duration,
) -> Result<Vec<u8>, FrameError> {
    r.tcp().set_read_timeout(header_timeout)?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Err(e)
                if got == 0
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                return Err(FrameError::Idle)
            }
            // A peer that closed with bytes of ours unread resets the connection; a TLS
            // peer that closed without a close_notify reads as an unexpected end.
            Err(e)
                if got == 0
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::UnexpectedEof
                    ) =>
            {
                return Err(FrameError::Closed)
            }
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        if (1..FRAME_HEADER_LEN).contains(&got) {
            // A header has begun: the rest of the frame must follow promptly.
            r.tcp().set_read_timeout(Some(body_timeout))?;
        }
    }
    let len = frame_len(header).map_err(FrameError::TooLong)?;
    r.tcp().set_read_timeout(Some(body_timeout))?;
    // Grow as bytes arrive rather than trusting the announced length with an allocation.
    let mut body = Vec::with_capacity(len.min(64 << 10));
    r.take(len as u64).read_to_end(&mut body)?;
    if body.len() < len {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
    }
    Ok(body)
}
