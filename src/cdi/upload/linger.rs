//! A lingering close, as Go's HTTP server does it, so that an early answer
//! (401, 409, 503, 400) reaches a client that is still sending its body.
//!
//! Closing a socket whose receive queue still holds unread bytes makes the
//! kernel send a reset, and a reset can destroy the answer before the client
//! read it ("connection reset by peer" instead of a 401). So, when the
//! connection is shut down, [`Linger`] first half-closes it (the client sees
//! the end of the answer), then reads and discards what the client still
//! sends until it closes its side, for at most [`LINGER_TIME`] and
//! [`LINGER_BYTES`]; only then is the socket closed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Longest wait for the client to close after our half-close.
pub(crate) const LINGER_TIME: Duration = Duration::from_secs(3);
/// Most bytes discarded while lingering.
pub(crate) const LINGER_BYTES: u64 = 64 << 20;

/// A TCP stream whose shutdown lingers (see the module documentation).
pub(crate) struct Linger {
    tcp: TcpStream,
    state: State,
}

enum State {
    Open,
    /// Half-closed; discarding until EOF, the deadline or the byte limit.
    Draining {
        deadline: Pin<Box<Sleep>>,
        discarded: u64,
    },
    Closed,
}

impl Linger {
    pub(crate) fn new(tcp: TcpStream) -> Linger {
        Linger {
            tcp,
            state: State::Open,
        }
    }
}

impl AsyncRead for Linger {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Linger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => {
                    std::task::ready!(Pin::new(&mut this.tcp).poll_shutdown(cx))?;
                    this.state = State::Draining {
                        deadline: Box::pin(tokio::time::sleep_until(Instant::now() + LINGER_TIME)),
                        discarded: 0,
                    };
                }
                State::Draining {
                    deadline,
                    discarded,
                } => {
                    if deadline.as_mut().poll(cx).is_ready() || *discarded >= LINGER_BYTES {
                        this.state = State::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 16 << 10];
                    let mut rb = ReadBuf::new(&mut scratch);
                    match Pin::new(&mut this.tcp).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                            this.state = State::Closed;
                        }
                        Poll::Ready(Ok(())) => *discarded += rb.filled().len() as u64,
                        // A reset or other error: nothing left to protect.
                        Poll::Ready(Err(_)) => this.state = State::Closed,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                State::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn answer_survives_an_unread_body() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut s = Linger::new(tcp);
            let mut head = [0u8; 4];
            s.read_exact(&mut head).await.expect("head");
            s.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("answer");
            s.shutdown().await.expect("shutdown");
        });
        let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
        // Send far more than the server reads, then read the answer.
        let body = vec![7u8; 4 << 20];
        let (mut r, mut w) = c.split();
        let send = async {
            let _ = w.write_all(&body).await;
        };
        let mut answer = Vec::new();
        let recv = async {
            let mut buf = [0u8; 256];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
                if answer.ends_with(b"\r\n\r\n") {
                    break;
                }
            }
        };
        tokio::join!(send, recv);
        assert!(answer.starts_with(b"HTTP/1.1 401"), "{answer:?}");
        drop(c);
        server.await.expect("server");
    }
}
