//! WAN emulation for a local cluster: every cross-region connection goes
//! through a TCP proxy that delays each direction by half the link's round
//! trip, and that can cut the link on command.
//!
//! Ordering is kept: each direction is one queue of (release time, bytes),
//! drained in order. A cut link closes its open connections and refuses new
//! ones at once (a reset, not a black hole), so callers notice in
//! milliseconds and treat the region as unreachable.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Bytes read per chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks queued per direction before the reader waits (backpressure).
pub const CHUNKS_QUEUED_MAX: usize = 1_024;

/// The three regions of a local cluster, home region first.
pub const REGIONS: [&str; 3] = reservoir_client::REGIONS;

/// The round trips between regions a local cluster emulates (`up --wan`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WanProfile {
    /// Public AWS inter-region measurements: us-east–eu-west 70 ms,
    /// eu-west–ap-south 120 ms, us-east–ap-south 186 ms.
    Aws,
    /// No added delay.
    #[value(name = "none")]
    Zero,
}

impl WanProfile {
    /// The profile called `name` (`aws`, `none`).
    pub fn parse(name: &str) -> Result<WanProfile, String> {
        <WanProfile as clap::ValueEnum>::from_str(name, false)
            .map_err(|_| format!("unknown WAN profile {name:?}: aws or none"))
    }
}

impl std::fmt::Display for WanProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

/// Round-trip time between two regions, by profile.
pub fn rtt_ms(profile: WanProfile, a: &str, b: &str) -> Result<u64, String> {
    if a == b {
        return Ok(0);
    }
    let pair = if a < b { (a, b) } else { (b, a) };
    match profile {
        WanProfile::Zero => Ok(0),
        WanProfile::Aws => match pair {
            ("eu-west", "us-east") => Ok(70),
            ("ap-south", "eu-west") => Ok(120),
            ("ap-south", "us-east") => Ok(186),
            _ => Err(format!("no aws round trip for {a}-{b}")),
        },
    }
}

/// One link between two regions: its round trip and whether it is cut.
pub struct Link {
    /// The two regions, in name order.
    pub regions: (String, String),
    /// Round-trip time added to every exchange.
    pub rtt_ms: u64,
    cut: AtomicBool,
    /// Bumped on every cut, so open connections close.
    cuts_tx: watch::Sender<u64>,
}

impl Link {
    fn new(a: &str, b: &str, rtt_ms: u64) -> Link {
        let regions = if a < b {
            (a.to_string(), b.to_string())
        } else {
            (b.to_string(), a.to_string())
        };
        Link {
            regions,
            rtt_ms,
            cut: AtomicBool::new(false),
            cuts_tx: watch::channel(0).0,
        }
    }

    /// True while the link is cut.
    pub fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Cuts the link: open connections close, new ones are refused.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.cuts_tx.send_modify(|n| *n += 1);
    }

    /// Heals the link.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Every link of a cluster.
pub struct Wan {
    links: BTreeMap<(String, String), Arc<Link>>,
}

impl Wan {
    /// Links between every pair of `regions` with the round trips of `profile`.
    pub fn new(profile: WanProfile, regions: &[&str]) -> Result<Wan, String> {
        let mut links = BTreeMap::new();
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                let link = Link::new(a, b, rtt_ms(profile, a, b)?);
                links.insert(link.regions.clone(), Arc::new(link));
            }
        }
        Ok(Wan { links })
    }

    /// The link between `a` and `b`.
    pub fn link(&self, a: &str, b: &str) -> Option<Arc<Link>> {
        let key = if a < b {
            (a.to_string(), b.to_string())
        } else {
            (b.to_string(), a.to_string())
        };
        self.links.get(&key).cloned()
    }

    /// Every link.
    pub fn links(&self) -> impl Iterator<Item = &Arc<Link>> {
        self.links.values()
    }

    /// Cuts every link of `region`.
    pub fn isolate(&self, region: &str) -> usize {
        let mut n = 0;
        for link in self
            .links
            .values()
            .filter(|l| l.regions.0 == region || l.regions.1 == region)
        {
            link.cut();
            n += 1;
        }
        n
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for link in self.links.values() {
            link.heal();
        }
    }
}

/// Proxies connections accepted on `listener` to `target` through `link`,
/// until `shutdown`.
pub async fn serve_proxy(
    listener: TcpListener,
    target: SocketAddr,
    link: Arc<Link>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let Ok((inbound, _)) = accepted else { continue };
        if link.is_cut() {
            drop(inbound);
            continue;
        }
        let link = link.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let one_way = Duration::from_millis(link.rtt_ms / 2);
            let mut cuts = link.cuts_tx.subscribe();
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::select! {
                _ = pump(in_read, out_write, one_way) => {}
                _ = pump(out_read, in_write, one_way) => {}
                _ = cuts.changed() => {}
            }
        });
    }
}

/// Copies one direction, releasing each chunk `delay` after it was read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(CHUNKS_QUEUED_MAX);
    let reader = async move {
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trips are symmetric and the profiles are the documented ones.
    #[test]
    fn profiles() {
        assert_eq!(rtt_ms(WanProfile::Aws, "us-east", "eu-west"), Ok(70));
        assert_eq!(rtt_ms(WanProfile::Aws, "eu-west", "us-east"), Ok(70));
        assert_eq!(rtt_ms(WanProfile::Aws, "ap-south", "eu-west"), Ok(120));
        assert_eq!(rtt_ms(WanProfile::Aws, "us-east", "ap-south"), Ok(186));
        assert_eq!(rtt_ms(WanProfile::Zero, "us-east", "ap-south"), Ok(0));
        assert!(WanProfile::parse("moon").is_err());
        for profile in [WanProfile::Aws, WanProfile::Zero] {
            assert_eq!(WanProfile::parse(&profile.to_string()), Ok(profile));
        }
        assert_eq!(WanProfile::Zero.to_string(), "none");
    }

    /// A proxied echo takes about the link's round trip, and a cut link
    /// refuses new connections.
    #[tokio::test]
    async fn proxy_delays_and_cuts() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let wan = Wan::new(WanProfile::Aws, &REGIONS).unwrap();
        let link = wan.link("us-east", "eu-west").unwrap();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        let (_stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(serve_proxy(proxy, echo_addr, link.clone(), stop_rx));

        let mut c = TcpStream::connect(proxy_addr).await.unwrap();
        let start = std::time::Instant::now();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        let rtt = start.elapsed();
        assert_eq!(&buf, b"ping");
        assert!(
            rtt >= Duration::from_millis(70),
            "round trip {rtt:?} shorter than the link's 70 ms"
        );

        wan.isolate("eu-west");
        // The open connection is closed...
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the cut closed the open connection");
        // ...and a new one is closed at once.
        let mut c2 = TcpStream::connect(proxy_addr).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), c2.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "a cut link refuses connections");
        wan.heal_all();
        assert!(!link.is_cut());
    }
}
