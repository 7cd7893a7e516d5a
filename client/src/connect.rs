//! Talking to a group of nodes as a client: channel settings, following the
//! leader, and retrying what the API says is safe to retry.
//!
//! Any node of a region accepts any call and forwards a write to its leader,
//! so a client may send to any node; sending to the leader saves a hop. A
//! [`Rotation`] holds channels to a group's nodes (each a [`ClientChannel`]
//! carrying the caller's credentials) with one of them current
//! (start it at the leader, from `Admin.GetStatus` or `/status`); after a
//! retryable failure the caller moves on to the next node. [`retry`] sends
//! the same call again (the same request id, so a reserve that was applied
//! before its answer was lost is found, not made twice) until it is answered
//! or a deadline passes.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tonic::transport::{ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::credentials::ClientChannel;
use crate::errors::reason_of;

/// How long a client waits for the TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a call may take unless the program sets its own: longer than
/// the longest a node may take to answer, a wait for an election (2 s) and
/// a forwarded call (at most 12 s: two commits of 3 s and the longest
/// `max_wait_ms`, 5 s, plus a margin).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause between two attempts of a retried call.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// The endpoint for a node's gRPC address (`host:port` or
/// `http://host:port`): TCP_NODELAY (calls are small and latency-bound),
/// [`CONNECT_TIMEOUT`] and [`CALL_TIMEOUT`]; a program may set its own call
/// timeout on it.
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    Ok(bare_endpoint(addr, None)?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true))
}

/// The endpoint for `host:port` (or `http://host:port`, `https://host:port`),
/// with tonic's defaults: TLS with `tls`, else plaintext.
pub(crate) fn bare_endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let authority = addr
        .strip_prefix("http://")
        .or_else(|| addr.strip_prefix("https://"))
        .unwrap_or(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))
        .map_err(|e| format!("bad node address {addr}: {e}"))?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("TLS settings for {addr}: {e}")),
        None => Ok(endpoint),
    }
}

/// True for an error that the API says is safe to retry with the same
/// request (on another node, or after a pause): `UNAVAILABLE` with
/// `NO_LEADER` or `OVERLOADED`, and failures that carry no Reservoir reason
/// (a refused or broken connection, a timeout: the outcome is unknown, and
/// the request id makes the retry safe).
pub fn is_retryable(status: &Status) -> bool {
    match reason_of(status).as_deref() {
        Some("NO_LEADER" | "OVERLOADED") => status.code() == Code::Unavailable,
        Some(_) => false,
        None => matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::DeadlineExceeded
        ),
    }
}

/// Channels to the nodes of one group, one of them current; each carries
/// the caller's credentials (TLS trust, the API key). Shared by concurrent
/// callers: a caller that failed on node `i` moves the current node on only
/// if no one else has already ([`Rotation::skip`]).
#[derive(Debug)]
pub struct Rotation {
    channels: Vec<ClientChannel>,
    current: AtomicUsize,
}

impl Clone for Rotation {
    fn clone(&self) -> Rotation {
        Rotation {
            channels: self.channels.clone(),
            current: AtomicUsize::new(self.current.load(Ordering::Relaxed)),
        }
    }
}

impl Rotation {
    /// A rotation over `channels` (at least one), starting at `first`.
    pub fn new(channels: Vec<ClientChannel>, first: usize) -> Rotation {
        assert!(!channels.is_empty(), "a rotation needs a node");
        Rotation {
            current: AtomicUsize::new(first % channels.len()),
            channels,
        }
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Never true: a rotation has a node.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// The current node's index and channel.
    pub fn pick(&self) -> (usize, ClientChannel) {
        let i = self.current.load(Ordering::Relaxed) % self.channels.len();
        (i, self.channels[i].clone())
    }

    /// Node `i`'s channel (modulo the number of nodes), current or not.
    pub fn channel(&self, i: usize) -> ClientChannel {
        self.channels[i % self.channels.len()].clone()
    }

    /// Makes node `i` current (the leader, once known).
    pub fn follow(&self, i: usize) {
        self.current.store(i % self.channels.len(), Ordering::Relaxed);
    }

    /// Moves on from node `from` to the next, unless another caller already
    /// moved on from it.
    pub fn skip(&self, from: usize) {
        let next = (from + 1) % self.channels.len();
        let _ = self
            .current
            .compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// What a retried call came to.
#[derive(Debug)]
pub struct Retried<T> {
    /// The answer, a refusal that is not safe to retry, or the last
    /// retryable error when the deadline passed.
    pub result: Result<T, Status>,
    /// Calls sent, at least 1.
    pub attempts: u32,
    /// The error each retried call got: its Reservoir reason, or for a
    /// failure without one its gRPC code.
    pub retried: Vec<String>,
    /// When the last call was sent, in milliseconds since the Unix epoch (the
    /// clock a region stamps reservations with, on this machine): a retried
    /// reserve answered with a reservation created before this was applied
    /// by an earlier attempt, and the retry found it.
    pub last_sent_ms: u64,
}

impl<T> Retried<T> {
    /// The same outcome with the answer mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Retried<U> {
        Retried {
            result: self.result.map(f),
            attempts: self.attempts,
            retried: self.retried,
            last_sent_ms: self.last_sent_ms,
        }
    }
}

/// Sends one call to the current node of `nodes`; on a retryable error
/// ([`is_retryable`]) moves on to the next node and sends the same call
/// again after [`RETRY_PAUSE`], until it is answered or `deadline` has
/// passed.
pub async fn retry<T, F, Fut>(nodes: &Rotation, deadline: Duration, call: F) -> Retried<T>
where
    F: FnMut(ClientChannel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    retry_every(nodes, deadline, RETRY_PAUSE, call).await
}

/// [`retry`] with another pause between attempts (a bulk caller that should
/// not hammer a group while it elects a leader).
pub async fn retry_every<T, F, Fut>(
    nodes: &Rotation,
    deadline: Duration,
    pause: Duration,
    mut call: F,
) -> Retried<T>
where
    F: FnMut(ClientChannel) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let give_up = Instant::now() + deadline;
    let mut attempts = 0;
    let mut retried = Vec::new();
    loop {
        attempts += 1;
        let last_sent_ms = unix_ms();
        let (i, channel) = nodes.pick();
        match call(channel).await.map(tonic::Response::into_inner) {
            Err(status) if is_retryable(&status) && Instant::now() < give_up => {
                retried.push(reason_of(&status).unwrap_or_else(|| format!("{:?}", status.code())));
                nodes.skip(i);
                tokio::time::sleep(pause).await;
            }
            result => {
                return Retried {
                    result,
                    attempts,
                    retried,
                    last_sent_ms,
                };
            }
        }
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_reason(code: Code, reason: &str) -> Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let details = ErrorDetails::with_error_info(
            reason,
            reservoir_proto::ERROR_DOMAIN,
            std::collections::HashMap::new(),
        );
        Status::with_error_details(code, "m", details)
    }

    #[test]
    fn retryable_is_what_the_api_says() {
        assert!(is_retryable(&with_reason(Code::Unavailable, "NO_LEADER")));
        assert!(is_retryable(&with_reason(Code::Unavailable, "OVERLOADED")));
        assert!(!is_retryable(&with_reason(
            Code::FailedPrecondition,
            "INSUFFICIENT_STOCK"
        )));
        assert!(is_retryable(&Status::unavailable("connection refused")));
        assert!(is_retryable(&Status::unknown("transport error")));
        assert!(is_retryable(&Status::deadline_exceeded("timeout")));
        assert!(!is_retryable(&Status::invalid_argument("bad")));
    }

    #[tokio::test]
    async fn concurrent_callers_move_on_once() {
        let channels = (1..=3)
            .map(|p| ClientChannel::bare(endpoint(&format!("127.0.0.1:{p}")).unwrap().connect_lazy()))
            .collect();
        let nodes = Rotation::new(channels, 1);
        assert_eq!(nodes.pick().0, 1);
        nodes.skip(1);
        nodes.skip(1); // a second caller that failed on node 1 too
        assert_eq!(nodes.pick().0, 2);
        nodes.skip(2);
        assert_eq!(nodes.pick().0, 0);
        nodes.follow(2);
        assert_eq!(nodes.pick().0, 2);
    }
}
