//! A tunnel stream opened in 0-RTT.
//!
//! Its header and first bytes leave with the resumed handshake, one round
//! trip before a full handshake would let them. The peer may still refuse
//! the early data (it restarted and lost the ticket, or its trust changed
//! and the ticket was dropped): quinn then fails every operation on the
//! stream with `ZeroRttRejected`, and the peer never saw it. So until the
//! handshake settles, the bytes written are kept; on refusal they are sent
//! again, after the header, on a new stream of the now established
//! connection, and the caller never notices.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use quinn::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// At most this much is kept for a replay; a writer with more waits for
/// the handshake to settle (a round trip).
const EARLY_LIMIT: usize = 64 * 1024;

type Settle = Pin<Box<dyn Future<Output = bool> + Send>>;
type Replay = Pin<Box<dyn Future<Output = io::Result<(SendStream, RecvStream)>> + Send>>;

enum Phase {
    /// The handshake has not settled: what is written is kept.
    Early {
        settle: Settle,
        sent: Vec<u8>,
        finished: bool,
    },
    /// Refused: a new stream carries the header and the kept bytes again.
    Replaying(Replay),
    /// Accepted, or replayed: the streams are final.
    Settled,
}

pub struct EarlyStream {
    conn: quinn::Connection,
    header: Vec<u8>,
    send: SendStream,
    recv: RecvStream,
    phase: Phase,
}

/// Whether the handshake accepted the early data: `None` until it settles.
pub type Settled = watch::Receiver<Option<bool>>;

impl EarlyStream {
    /// `send` already carries `header`.
    pub fn new(
        conn: quinn::Connection,
        header: Vec<u8>,
        send: SendStream,
        recv: RecvStream,
        mut settled: Settled,
    ) -> Self {
        let settle: Settle = Box::pin(async move {
            match settled.wait_for(Option::is_some).await {
                Ok(v) => (*v).unwrap_or(false),
                // The handshake task ended without a verdict.
                Err(_) => false,
            }
        });
        Self {
            conn,
            header,
            send,
            recv,
            phase: Phase::Early {
                settle,
                sent: Vec::new(),
                finished: false,
            },
        }
    }

    fn early(&self) -> bool {
        matches!(self.phase, Phase::Early { .. })
    }

    fn replay(&mut self) {
        let Phase::Early { sent, finished, .. } =
            std::mem::replace(&mut self.phase, Phase::Settled)
        else {
            return;
        };
        let conn = self.conn.clone();
        let header = std::mem::take(&mut self.header);
        tracing::debug!(peer = %conn.remote_address(), bytes = sent.len(), "0-RTT data refused; sending it again on the established tunnel");
        self.phase = Phase::Replaying(Box::pin(async move {
            let (mut send, recv) = conn.open_bi().await.map_err(io::Error::other)?;
            send.write_all(&header).await?;
            send.write_all(&sent).await?;
            if finished {
                send.finish().map_err(io::Error::other)?;
            }
            Ok((send, recv))
        }));
    }

    /// Advances the phase; `Ready` when the streams may be used: once
    /// settled, or still early unless `wait` (the writer is over the limit).
    fn poll_phase(&mut self, cx: &mut Context<'_>, wait: bool) -> Poll<io::Result<()>> {
        loop {
            match &mut self.phase {
                Phase::Settled => return Poll::Ready(Ok(())),
                Phase::Early { settle, .. } => match settle.as_mut().poll(cx) {
                    Poll::Ready(true) => {
                        self.phase = Phase::Settled;
                        self.header = Vec::new();
                    }
                    Poll::Ready(false) => self.replay(),
                    Poll::Pending if wait => return Poll::Pending,
                    Poll::Pending => return Poll::Ready(Ok(())),
                },
                Phase::Replaying(f) => {
                    let (send, recv) = ready!(f.as_mut().poll(cx))?;
                    self.send = send;
                    self.recv = recv;
                    self.phase = Phase::Settled;
                }
            }
        }
    }

    fn over_limit(&self) -> bool {
        matches!(&self.phase, Phase::Early { sent, .. } if sent.len() >= EARLY_LIMIT)
    }
}

/// quinn's refusal of the early data, as the stream's I/O error.
fn refused(e: &io::Error) -> bool {
    let Some(inner) = e.get_ref() else {
        return false;
    };
    matches!(
        inner.downcast_ref::<quinn::WriteError>(),
        Some(quinn::WriteError::ZeroRttRejected)
    ) || matches!(
        inner.downcast_ref::<quinn::ReadError>(),
        Some(quinn::ReadError::ZeroRttRejected)
    )
}

impl AsyncRead for EarlyStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_phase(cx, false))?;
            match AsyncRead::poll_read(Pin::new(&mut this.recv), cx, buf) {
                Poll::Ready(Err(e)) if this.early() && refused(&e) => this.replay(),
                r => return r,
            }
        }
    }
}

impl AsyncWrite for EarlyStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let wait = this.over_limit();
            ready!(this.poll_phase(cx, wait))?;
            let room = match &this.phase {
                Phase::Early { sent, .. } => EARLY_LIMIT - sent.len(),
                _ => buf.len(),
            };
            let buf = &buf[..buf.len().min(room)];
            match AsyncWrite::poll_write(Pin::new(&mut this.send), cx, buf) {
                Poll::Ready(Ok(n)) => {
                    if let Phase::Early { sent, .. } = &mut this.phase {
                        sent.extend_from_slice(&buf[..n]);
                    }
                    return Poll::Ready(Ok(n));
                }
                Poll::Ready(Err(e)) if this.early() && refused(&e) => this.replay(),
                r => return r,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_phase(cx, false))?;
        AsyncWrite::poll_flush(Pin::new(&mut this.send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.poll_phase(cx, false))?;
            match AsyncWrite::poll_shutdown(Pin::new(&mut this.send), cx) {
                Poll::Ready(Ok(())) => {
                    if let Phase::Early { finished, .. } = &mut this.phase {
                        *finished = true;
                    }
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Err(e)) if this.early() && refused(&e) => this.replay(),
                r => return r,
            }
        }
    }
}
