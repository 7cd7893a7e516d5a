//! A listener's accepted connections, bounded per remote address: past the
//! bound a new connection is closed as soon as it is accepted, before TLS,
//! HTTP/2 or a service allocates anything for it, and counted in
//! `reservoir_connections_refused_total{plane}`.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Pause after an accept error (out of file descriptors, say) before the
/// next accept, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

type OpenCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// An accepted TCP connection, counted against its remote address while open.
pub struct Counted {
    stream: TcpStream,
    _open: OpenGuard,
}

struct OpenGuard {
    ip: IpAddr,
    counts: OpenCounts,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The accepted connections of `listener`, TCP_NODELAY set, at most
/// `per_address` open at once from one remote address. Accepting stops
/// when the stream is dropped (the server shut down).
pub fn limited(
    listener: TcpListener,
    per_address: usize,
    plane: &'static str,
) -> ReceiverStream<io::Result<Counted>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let counts: OpenCounts = Arc::default();
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(plane, error = %e, "listener: accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let ip = remote.ip();
            {
                let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                let n = c.entry(ip).or_insert(0);
                if *n >= per_address {
                    drop(c);
                    metrics::counter!("reservoir_connections_refused_total", "plane" => plane).increment(1);
                    if crate::server::logging::call_line_allowed() {
                        tracing::warn!(plane, %remote, per_address, "connection refused: too many from one address");
                    }
                    continue;
                }
                *n += 1;
            }
            let _ = stream.set_nodelay(true);
            let counted = Counted {
                stream,
                _open: OpenGuard {
                    ip,
                    counts: counts.clone(),
                },
            };
            if tx.send(Ok(counted)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    /// Past the bound, a connection from the same address is closed at
    /// once; closing one makes room for the next.
    #[tokio::test]
    async fn connections_per_address_are_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = limited(listener, 2, "test");
        let _a = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        // The third is closed by the server: the client reads EOF.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read(&mut c, &mut buf),
        )
        .await
        .expect("the refused connection is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        let fourth = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(
            matches!(fourth, Ok(Some(Ok(_)))),
            "a freed slot takes the next connection"
        );
    }
}
