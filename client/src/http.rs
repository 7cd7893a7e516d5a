//! A small HTTP/1.1 client for what a program asks a cluster outside gRPC:
//! a node's `/status` and `/readyz`, and the control API of `reservoir up`.
//!
//! Built on hyper's HTTP/1.1 client connection over a tokio `TcpStream`:
//! one request per connection, the whole exchange (connect, request,
//! response and body) within one timeout, and the response body read up to
//! a bound ([`RESPONSE_BYTES_MAX`] unless the caller names another); a
//! longer body is refused, not cut.
//!
//! An address is a [`HostPort`]: a name is resolved on each exchange, and
//! each address it resolves to is tried in turn until one connects.
//!
//! Caveats: plain `http://` only (no TLS, no redirects, no keep-alive); the
//! body must be UTF-8, which is all Reservoir serves (JSON and plain text).

use std::time::Duration;

use crate::addr::HostPort;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Most bytes of a response body read unless the caller names another bound.
pub const RESPONSE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Why an exchange has no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The TCP connection could not be made (refused, unreachable).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: HostPort,
        /// What the connect said.
        source: std::io::Error,
    },
    /// The exchange did not finish within its timeout.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The address asked.
        addr: HostPort,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The request could not be built (a path that is no URI path).
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The connection broke, or the server's answer was not HTTP/1.1.
    #[error("HTTP exchange with {addr} failed: {source}")]
    Protocol {
        /// The address asked.
        addr: HostPort,
        /// What hyper said.
        source: hyper::Error,
    },
    /// The response body is longer than the bound.
    #[error("response body over {bytes_max} bytes")]
    TooLarge {
        /// The bound.
        bytes_max: usize,
    },
    /// The response body is not UTF-8.
    #[error("response body is not UTF-8: {0}")]
    NotUtf8(#[from] std::string::FromUtf8Error),
}

/// `GET path` from `addr`: the status code and the body (at most
/// [`RESPONSE_BYTES_MAX`] bytes), all within `timeout`.
pub async fn get(
    addr: impl Into<HostPort>,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    get_bounded(addr, path, timeout, RESPONSE_BYTES_MAX).await
}

/// [`get`] with another bound on the body: at most `body_bytes_max` bytes.
pub async fn get_bounded(
    addr: impl Into<HostPort>,
    path: &str,
    timeout: Duration,
    body_bytes_max: usize,
) -> Result<(u16, String), HttpError> {
    let addr = addr.into();
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    exchange(addr, request, timeout, body_bytes_max).await
}

/// `POST path` to `addr` with a JSON body and, if given, `authorization:
/// Bearer {bearer}`: the status code and the response body (at most
/// [`RESPONSE_BYTES_MAX`] bytes), all within `timeout`.
pub async fn post_json(
    addr: impl Into<HostPort>,
    path: &str,
    json: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let addr = addr.into();
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = bearer {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(Full::new(Bytes::copy_from_slice(json.as_bytes())))?;
    exchange(addr, request, timeout, RESPONSE_BYTES_MAX).await
}

/// [`get`] with `authorization: Bearer {bearer}`.
pub async fn get_authorized(
    addr: impl Into<HostPort>,
    path: &str,
    bearer: &str,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let addr = addr.into();
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::AUTHORIZATION, format!("Bearer {bearer}"))
        .body(Full::new(Bytes::new()))?;
    exchange(addr, request, timeout, RESPONSE_BYTES_MAX).await
}

/// One request on a fresh connection, bounded by `timeout` as a whole.
async fn exchange(
    addr: HostPort,
    request: Request<Full<Bytes>>,
    timeout: Duration,
    body_bytes_max: usize,
) -> Result<(u16, String), HttpError> {
    tokio::time::timeout(timeout, exchange_untimed(&addr, request, body_bytes_max))
        .await
        .map_err(|_| HttpError::Timeout { addr, timeout })?
}

async fn exchange_untimed(
    addr: &HostPort,
    request: Request<Full<Bytes>>,
    body_bytes_max: usize,
) -> Result<(u16, String), HttpError> {
    let protocol = |source| HttpError::Protocol {
        addr: addr.clone(),
        source,
    };
    let stream = connect(addr).await.map_err(|source| HttpError::Connect {
        addr: addr.clone(),
        source,
    })?;
    // Small requests and answers: do not wait to fill a segment.
    stream.set_nodelay(true).ok();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(protocol)?;
    let answer = async move {
        let response = sender.send_request(request).await.map_err(protocol)?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), body_bytes_max)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(source) => protocol(*source),
                // Limited's only other error is its own.
                Err(e) => {
                    debug_assert!(e.is::<LengthLimitError>(), "{e}");
                    HttpError::TooLarge {
                        bytes_max: body_bytes_max,
                    }
                }
            })?
            .to_bytes();
        Ok((status, String::from_utf8(body.to_vec())?))
    };
    // The connection moves the bytes; it is polled here, not spawned, so
    // the timeout's cancellation drops the socket with the exchange. If it
    // ends first (the server closed after answering), what it delivered is
    // still read; a connection that broke surfaces as its own error.
    let mut answer = std::pin::pin!(answer);
    tokio::select! {
        biased;
        result = &mut answer => result,
        ended = connection => match (answer.await, ended) {
            // The connection's own error says more (e.g. "invalid HTTP
            // version") than the answer's "connection closed".
            (Err(_), Err(source)) => Err(protocol(source)),
            (result, _) => result,
        },
    }
}

/// A TCP connection to `addr`: its name resolved now, each address it
/// resolves to tried in turn; the last failure if none connects.
async fn connect(addr: &HostPort) -> std::io::Result<TcpStream> {
    let mut last = None;
    for socket in addr.resolve().await? {
        match TcpStream::connect(socket).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{} resolves to no address", addr.host_str()))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// A one-connection server on 127.0.0.1 that reads the request (up to
    /// the end of its body, by `Content-Length`), answers `response` raw and
    /// closes; the request it read arrives on the returned channel.
    async fn serve_once(response: Vec<u8>) -> (SocketAddr, oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (request_tx, request_rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_string)
                        })
                        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                    if body.len() >= length {
                        break;
                    }
                }
                assert!(n > 0, "the client closed mid-request: {text:?}");
            }
            socket.write_all(&response).await.unwrap();
            socket.shutdown().await.unwrap();
            let _ = request_tx.send(String::from_utf8(request).unwrap());
        });
        (addr, request_rx)
    }

    fn answer(status_line: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// A GET returns the status code and body, whatever the code, and sends
    /// the path and Host.
    #[tokio::test]
    async fn get_returns_status_and_body() {
        let (addr, request) = serve_once(answer("200 OK", "{\"role\":\"leader\"}")).await;
        let (code, body) = get(addr, "/status", TIMEOUT).await.unwrap();
        assert_eq!((code, body.as_str()), (200, "{\"role\":\"leader\"}"));
        let request = request.await.unwrap();
        assert!(request.starts_with("GET /status HTTP/1.1\r\n"), "{request:?}");
        assert!(
            request.to_ascii_lowercase().contains(&format!("host: {addr}")),
            "{request:?}"
        );

        let (addr, _) = serve_once(answer("503 Service Unavailable", "not ready")).await;
        assert_eq!(
            get(addr, "/readyz", TIMEOUT).await.unwrap(),
            (503, "not ready".to_string())
        );
    }

    /// A host name is resolved when the exchange is made (and sent as the
    /// Host); a name that resolves nowhere is a connect error naming it.
    #[tokio::test]
    async fn names_are_resolved_per_exchange() {
        let (addr, request) = serve_once(answer("200 OK", "ok")).await;
        let named = HostPort::new("localhost", addr.port()).unwrap();
        assert_eq!(get(&named, "/readyz", TIMEOUT).await.unwrap().0, 200);
        let request = request.await.unwrap().to_ascii_lowercase();
        assert!(
            request.contains(&format!("host: localhost:{}", addr.port())),
            "{request:?}"
        );
        let nowhere: HostPort = "no-such-host.invalid:7002".parse().unwrap();
        let e = get(&nowhere, "/", TIMEOUT).await.unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains("no-such-host.invalid:7002"), "{e}");
    }

    /// A POST sends its JSON body with its type and length.
    #[tokio::test]
    async fn post_sends_json() {
        let (addr, request) = serve_once(answer("200 OK", "[]")).await;
        let json = r#"{"region":"eu-west"}"#;
        let (code, body) = post_json(addr, "/links/partition", json, Some("t"), TIMEOUT)
            .await
            .unwrap();
        assert_eq!((code, body.as_str()), (200, "[]"));
        let request = request.await.unwrap();
        let lower = request.to_ascii_lowercase();
        assert!(
            request.starts_with("POST /links/partition HTTP/1.1\r\n"),
            "{request:?}"
        );
        assert!(lower.contains("content-type: application/json"), "{request:?}");
        assert!(
            lower.contains(&format!("content-length: {}", json.len())),
            "{request:?}"
        );
        assert!(request.ends_with(&format!("\r\n\r\n{json}")), "{request:?}");

        let (addr, request) = serve_once(answer("200 OK", "[]")).await;
        assert_eq!(
            post_json(addr, "/links/heal", "", None, TIMEOUT).await.unwrap().0,
            200
        );
        assert!(request.await.unwrap().ends_with("\r\n\r\n"));
    }

    /// A chunked body, and one delimited by the server closing, are read whole.
    #[tokio::test]
    async fn chunked_and_close_delimited_bodies() {
        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nWiki\r\n6;x=1\r\npedia \r\n0\r\n\r\n";
        let (addr, _) = serve_once(chunked.to_vec()).await;
        assert_eq!(
            get(addr, "/", TIMEOUT).await.unwrap(),
            (200, "Wikipedia ".to_string())
        );

        let (addr, _) =
            serve_once(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end".to_vec()).await;
        assert_eq!(
            get(addr, "/", TIMEOUT).await.unwrap(),
            (200, "until the end".to_string())
        );
    }

    /// A body over the bound is refused, whether its length is announced or
    /// found out while reading; one at the bound is read.
    #[tokio::test]
    async fn oversized_body_is_refused() {
        let (addr, _) = serve_once(answer("200 OK", &"x".repeat(17))).await;
        let e = get_bounded(addr, "/", TIMEOUT, 16).await.unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { bytes_max: 16 }), "{e:?}");

        let chunked = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\n{}\r\n10\r\n{}\r\n0\r\n\r\n",
            "a".repeat(16),
            "b".repeat(16)
        );
        let (addr, _) = serve_once(chunked.into_bytes()).await;
        let e = get_bounded(addr, "/", TIMEOUT, 20).await.unwrap_err();
        assert!(matches!(e, HttpError::TooLarge { bytes_max: 20 }), "{e:?}");

        let (addr, _) = serve_once(answer("200 OK", &"x".repeat(16))).await;
        assert_eq!(get_bounded(addr, "/", TIMEOUT, 16).await.unwrap().1.len(), 16);
    }

    /// A server that accepts and never answers costs the timeout, no more.
    #[tokio::test]
    async fn silent_server_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let timeout = Duration::from_millis(200);
        let started = std::time::Instant::now();
        let e = get(addr, "/status", timeout).await.unwrap_err();
        let took = started.elapsed();
        held.abort();
        assert!(matches!(e, HttpError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().contains("no answer"), "{e}");
        assert!(took >= timeout && took < timeout * 5, "took {took:?}");
    }

    /// Nothing listening: a connect error; an answer that is not
    /// HTTP: a protocol error.
    #[tokio::test]
    async fn refused_and_garbled() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = get(addr, "/", TIMEOUT).await.unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e:?}");

        let (addr, _) = serve_once(b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()).await;
        let e = get(addr, "/", TIMEOUT).await.unwrap_err();
        assert!(matches!(e, HttpError::Protocol { .. }), "{e:?}");
    }
}
