//! [`HostPort`]: how a program or a node reaches a node, `host:port`, where
//! the host is a DNS name (`us-east-1`, `node-2.reservoir.svc`) or an IP
//! literal (`10.0.0.7`, `[fd00::7]`).
//!
//! A name is kept as written and resolved when a connection is made, never
//! at parse time: a container platform creates a node's DNS record when the
//! node starts, so a peer named before its record exists is a connection
//! that fails now and succeeds on a later try, not a bad config. Every
//! channel made from a [`HostPort`] (tonic's `Endpoint`, [`crate::http`])
//! resolves the name again on each connection attempt, so a node that comes
//! back under a new IP is found again.
//!
//! In files (`cluster.json`, node configs) a `HostPort` is a string, and an
//! IP literal reads and writes exactly as a `SocketAddr` did
//! (`"127.0.0.1:7001"`, `"[::1]:7001"`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest DNS name (RFC 1035: 253 characters written out).
pub const HOST_NAME_BYTES_MAX: usize = 253;
/// Longest label of a DNS name.
pub const LABEL_BYTES_MAX: usize = 63;
/// Longest `host:port` text: the longest name, `:` and five digits.
pub const HOST_PORT_BYTES_MAX: usize = HOST_NAME_BYTES_MAX + 6;

/// The host of a [`HostPort`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// An IP literal.
    Ip(IpAddr),
    /// A DNS name, as written (compared as written: `Node-1` and `node-1`
    /// are different strings, though DNS would find the same host).
    Name(String),
}

/// `host:port`: a DNS name or an IP literal, and a port 1-65535.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostPort {
    host: Host,
    port: u16,
}

/// Why a text is not a `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad address {text:?}: {why}")]
pub struct BadAddress {
    /// The text, cut to [`HOST_PORT_BYTES_MAX`] characters.
    pub text: String,
    /// What is wrong with it.
    pub why: String,
}

impl HostPort {
    /// `host` (a name, an IPv4 literal, or an IPv6 literal with or without
    /// brackets) and `port`, checked as [`HostPort::from_str`] checks them.
    pub fn new(host: &str, port: u16) -> Result<HostPort, BadAddress> {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match host.parse::<Ipv6Addr>() {
            Ok(ip) => HostPort::from_str(&format!("[{ip}]:{port}")),
            Err(_) => HostPort::from_str(&format!("{host}:{port}")),
        }
    }

    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The host as text, without brackets: a name, or an IP literal. This
    /// is the name a node's certificate must carry for TLS to this address.
    pub fn host_str(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The IP, when the host is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ip(ip) => Some(ip),
            Host::Name(_) => None,
        }
    }

    /// The socket address, when the host is an IP literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }

    /// The same host on another port.
    pub fn with_port(&self, port: u16) -> Result<HostPort, BadAddress> {
        if port == 0 {
            return Err(BadAddress {
                text: format!("{self}"),
                why: "port 0: a port is 1-65535".into(),
            });
        }
        Ok(HostPort {
            host: self.host.clone(),
            port,
        })
    }

    /// True for `localhost` and loopback IP literals.
    pub fn is_loopback(&self) -> bool {
        match &self.host {
            Host::Ip(ip) => ip.is_loopback(),
            Host::Name(name) => name.eq_ignore_ascii_case("localhost"),
        }
    }

    /// Resolves the host now (a name through the system resolver; an IP
    /// literal as itself). A name that does not resolve is an error of
    /// this attempt only.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(ip, self.port)]),
            Host::Name(ref name) => Ok(tokio::net::lookup_host((name.as_str(), self.port))
                .await?
                .collect()),
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl FromStr for HostPort {
    type Err = BadAddress;

    /// Parses `host:port`: a DNS name of letters, digits, `-` and `.`
    /// (labels of 1-63 characters, not starting or ending with `-`, at most
    /// 253 in all, the last not all digits), an IPv4 literal, or an IPv6
    /// literal in brackets; a port 1-65535.
    fn from_str(text: &str) -> Result<HostPort, BadAddress> {
        let bad = |why: String| BadAddress {
            text: text.chars().take(HOST_PORT_BYTES_MAX).collect(),
            why,
        };
        if text.len() > HOST_PORT_BYTES_MAX {
            return Err(bad(format!("longer than {HOST_PORT_BYTES_MAX} bytes")));
        }
        if text.contains("://") {
            return Err(bad("no scheme here; write host:port".into()));
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (ip, port) = rest
                .split_once("]:")
                .ok_or_else(|| bad("an IPv6 host in brackets must be followed by :port".into()))?;
            let ip: Ipv6Addr = ip
                .parse()
                .map_err(|_| bad(format!("[{ip}] is not an IPv6 address")))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = text
                .rsplit_once(':')
                .ok_or_else(|| bad("no port; write host:port".into()))?;
            if host.contains(':') {
                return Err(bad("write an IPv6 host in brackets, e.g. [::1]:7001".into()));
            }
            let host = match host.parse::<Ipv4Addr>() {
                Ok(ip) => Host::Ip(IpAddr::V4(ip)),
                Err(_) => Host::Name(check_name(host).map_err(bad)?.to_string()),
            };
            (host, port)
        };
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("port {port:?} is not a number 1-65535")));
        }
        let port: u32 = port.parse().map_err(|_| bad(format!("port {port:?}")))?;
        let port = u16::try_from(port)
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad(format!("port {port} is not 1-65535")))?;
        Ok(HostPort { host, port })
    }
}

/// Checks the syntax of a DNS host name (RFC 1123); returns it.
pub fn check_name(name: &str) -> Result<&str, String> {
    if name.is_empty() {
        return Err("no host; write host:port".into());
    }
    if name.len() > HOST_NAME_BYTES_MAX {
        return Err(format!("host name longer than {HOST_NAME_BYTES_MAX} bytes"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() || label.len() > LABEL_BYTES_MAX {
            return Err(format!(
                "host {name:?}: each dot-separated label must be 1-{LABEL_BYTES_MAX} characters"
            ));
        }
        if !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!(
                "host {name:?} is not a DNS name (letters, digits, '-' and '.') or an IP address"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("host {name:?}: a label must not start or end with '-'"));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("host {name:?} is neither an IPv4 address nor a DNS name"));
    }
    Ok(name)
}

impl TryFrom<String> for HostPort {
    type Error = BadAddress;

    fn try_from(text: String) -> Result<HostPort, BadAddress> {
        text.parse()
    }
}

impl From<HostPort> for String {
    fn from(addr: HostPort) -> String {
        addr.to_string()
    }
}

impl From<SocketAddr> for HostPort {
    /// A socket address as an IP literal host. Port 0 (never a node's
    /// address) is kept as is.
    fn from(addr: SocketAddr) -> HostPort {
        HostPort {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }
}

impl From<&HostPort> for HostPort {
    fn from(addr: &HostPort) -> HostPort {
        addr.clone()
    }
}

impl From<&SocketAddr> for HostPort {
    fn from(addr: &SocketAddr) -> HostPort {
        HostPort::from(*addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// IP literals and DNS names parse and print back as written.
    #[test]
    fn good_addresses_round_trip() {
        for text in [
            "127.0.0.1:7001",
            "[::1]:7001",
            "0.0.0.0:1",
            "localhost:65535",
            "us-east-1:7000",
            "node-2.reservoir.svc.cluster.local:7001",
            "A1.example:80",
            "x:7",
        ] {
            let addr: HostPort = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(addr.to_string(), text);
            let json = serde_json::to_string(&addr).unwrap();
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(serde_json::from_str::<HostPort>(&json).unwrap(), addr);
        }
        let a: HostPort = "10.1.2.3:9".parse().unwrap();
        assert_eq!(a.socket_addr(), Some("10.1.2.3:9".parse().unwrap()));
        assert_eq!(HostPort::from("10.1.2.3:9".parse::<SocketAddr>().unwrap()), a);
        let n: HostPort = "us-east-1:7000".parse().unwrap();
        assert_eq!((n.ip(), n.host_str(), n.port()), (None, "us-east-1".into(), 7000));
        assert_eq!(HostPort::new("::1", 5).unwrap().to_string(), "[::1]:5");
        assert_eq!(HostPort::new("[::1]", 5).unwrap().host_str(), "::1");
        assert_eq!(n.with_port(7002).unwrap().to_string(), "us-east-1:7002");
        assert!(HostPort::new("localhost", 1).unwrap().is_loopback());
    }

    /// Each kind of bad address is refused, saying why.
    #[test]
    fn bad_addresses_are_refused() {
        let long = format!("{}:1", vec!["a".repeat(63); 4].join("."));
        for (text, why) in [
            ("", "no port"),
            ("host", "no port"),
            (":7001", "no host"),
            ("host:", "port"),
            ("host:0", "1-65535"),
            ("host:65536", "1-65535"),
            ("host:+1", "port"),
            ("host:7a", "port"),
            ("a_b:1", "DNS name"),
            ("a b:1", "DNS name"),
            ("-a:1", "'-'"),
            ("a-:1", "'-'"),
            ("a..b:1", "label"),
            ("a.:1", "label"),
            ("1.2.3.999:1", "neither"),
            ("::1:7001", "brackets"),
            ("[::1]", "followed by :port"),
            ("[zz]:1", "IPv6"),
            ("http://a:1", "scheme"),
            (long.as_str(), "longer"),
        ] {
            let e = text.parse::<HostPort>().unwrap_err();
            assert!(e.to_string().contains(why), "{text:?}: {e}");
        }
        let label = format!("{}:1", "a".repeat(64));
        assert!(label.parse::<HostPort>().is_err());
        assert!(serde_json::from_str::<HostPort>("\"a_b:1\"").is_err());
    }

    /// A name resolves when asked, an IP literal as itself.
    #[tokio::test]
    async fn names_resolve_when_asked() {
        let ip: HostPort = "127.0.0.1:5".parse().unwrap();
        assert_eq!(ip.resolve().await.unwrap(), vec![ip.socket_addr().unwrap()]);
        let name: HostPort = "localhost:5".parse().unwrap();
        let found = name.resolve().await.unwrap();
        assert!(
            found.iter().all(|a| a.ip().is_loopback() && a.port() == 5),
            "{found:?}"
        );
        let nowhere: HostPort = "no-such-host.invalid:5".parse().unwrap();
        assert!(nowhere.resolve().await.is_err());
    }
}
