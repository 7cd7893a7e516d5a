//! One gRPC channel per peer address, shared by every caller in a process.
//!
//! A node talks to each peer for three reasons: Raft messages, control-plane
//! calls (the rebalancer, the reconciler, gossip) and forwarded client calls.
//! All three take their channel from one [`Channels`], so a node holds one
//! HTTP/2 connection per peer, not three. A channel connects lazily on its
//! first call and reconnects by itself after a failure.
//!
//! An address is `host:port` ([`crate::HostPort`]); a DNS name is resolved
//! by each connection attempt (tonic's connector asks the system resolver
//! every time it connects), never when the channel is made: a peer whose
//! name does not resolve yet (its container is still starting) is a call
//! that fails `UNAVAILABLE` and is retried, and a peer that comes back
//! under a new IP is found by the next reconnect. With TLS the host is
//! also the name the peer's certificate must carry.
//!
//! The channel carries no per-call timeout: each caller bounds its own calls
//! (a forwarded client call, a control call, a Raft RPC have different
//! budgets).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// How long a channel waits for the TCP connection to a peer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// HTTP/2 keep-alive pings on idle connections, so a dead peer is noticed
/// before the next call needs it.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Most peer addresses a cache holds. Peers come from a node's config and
/// its groups' membership (a handful); past this bound a new address gets a
/// fresh channel that is not kept.
pub const CHANNELS_MAX: usize = 1_024;

/// Lazily connected, reused channels, one per peer address (`host:port` or
/// `http://host:port`).
#[derive(Default)]
pub struct Channels {
    channels: Mutex<BTreeMap<String, Channel>>,
    /// Mutual TLS on every channel (a node's peer plane); `None`: plaintext.
    tls: Option<ClientTlsConfig>,
}

impl Channels {
    /// A cache with no connections yet; plaintext channels.
    pub fn new() -> Channels {
        Channels::default()
    }

    /// A cache whose channels speak TLS with `tls` (the cluster's CA, and
    /// the node's own certificate to present).
    pub fn with_tls(tls: ClientTlsConfig) -> Channels {
        Channels {
            channels: Mutex::default(),
            tls: Some(tls),
        }
    }

    /// The channel to `addr`, made on first use. Errors only for an address
    /// that is not a URI authority.
    pub fn get(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = endpoint(addr, self.tls.as_ref())?.connect_lazy();
        if channels.len() < CHANNELS_MAX {
            channels.insert(addr.to_string(), channel.clone());
        }
        Ok(channel)
    }
}

/// The endpoint every peer channel is made from: TCP_NODELAY (requests are
/// small and latency-bound), the connect timeout, keep-alive while idle;
/// TLS when `tls` is given.
fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    Ok(crate::connect::bare_endpoint(addr, tls)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_while_idle(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_channel_per_address() {
        let channels = Channels::new();
        channels.get("127.0.0.1:1").unwrap();
        channels.get("http://127.0.0.1:2").unwrap();
        channels.get("127.0.0.1:1").unwrap();
        assert_eq!(channels.channels.lock().unwrap().len(), 2);
    }

    /// A channel to a name is made before anything listens or resolves; its
    /// calls fail `UNAVAILABLE` (retryable) until a server is there, and
    /// the same channel then connects, resolving the name again.
    #[tokio::test]
    async fn names_connect_when_called_and_reconnect() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let channels = Channels::new();
        let nowhere = channels.get(&format!("no-such-host.invalid:{port}")).unwrap();
        let e = HealthClient::new(nowhere)
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert!(crate::is_retryable(&e), "{e:?}");
        let named = channels.get(&format!("localhost:{port}")).unwrap();
        let check = || async {
            HealthClient::new(named.clone())
                .check(HealthCheckRequest::default())
                .await
        };
        let e = check().await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(crate::is_retryable(&e), "{e:?}");
        let (_reporter, health) = tonic_health::server::health_reporter();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match check().await {
                Ok(_) => break,
                Err(e) => assert!(std::time::Instant::now() < deadline, "never connected: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn bad_addresses_are_refused() {
        let err = endpoint("not an address", None).unwrap_err();
        assert!(err.contains("bad node address"), "{err}");
    }
}
