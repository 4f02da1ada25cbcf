//! A guard on the upstream byte stream: no line may grow past a limit.
//!
//! The SSE parser buffers until it sees a line end; a server that never sends
//! one would otherwise grow that buffer without bound.

use bytes::Bytes;
use futures::{Stream, StreamExt, future};

/// An item of [`cap_line_length`]'s output stream.
#[derive(Debug, thiserror::Error)]
pub enum LineError<E> {
    /// The underlying stream failed.
    #[error("{0}")]
    Transport(E),
    /// A line reached `max` bytes without a line end.
    #[error("upstream sent a line longer than {0} bytes")]
    TooLong(usize),
}

/// Passes `stream` through unchanged, but fails (and ends) once `max` bytes
/// arrive without a `\n` or `\r`.
pub fn cap_line_length<S, E>(stream: S, max: usize) -> impl Stream<Item = Result<Bytes, LineError<E>>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    stream.scan((0usize, false), move |(run, failed), item| {
        if *failed {
            return future::ready(None);
        }
        let out = match item {
            Err(e) => {
                *failed = true;
                Err(LineError::Transport(e))
            }
            Ok(bytes) => {
                match bytes.iter().rposition(|b| *b == b'\n' || *b == b'\r') {
                    Some(pos) => *run = bytes.len() - pos - 1,
                    None => *run += bytes.len(),
                }
                if *run > max {
                    *failed = true;
                    Err(LineError::TooLong(max))
                } else {
                    Ok(bytes)
                }
            }
        };
        future::ready(Some(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_fail_short_lines_pass() {
        let ok = futures::stream::iter(vec![
            Ok::<_, ()>(Bytes::from_static(b"data: 1234")),
            Ok(Bytes::from_static(b"5678\n\ndata: x\r\n")),
        ]);
        let out: Vec<_> = cap_line_length(ok, 16).collect().await;
        assert!(out.iter().all(Result::is_ok));

        let long = futures::stream::iter(vec![
            Ok::<_, ()>(Bytes::from_static(b"data: 1234")),
            Ok(Bytes::from_static(b"5678901234")),
            Ok(Bytes::from_static(b"\n")),
        ]);
        let out: Vec<_> = cap_line_length(long, 16).collect().await;
        assert_eq!(out.len(), 2, "stream ends after the error");
        assert!(matches!(out[1], Err(LineError::TooLong(16))));
    }
}
