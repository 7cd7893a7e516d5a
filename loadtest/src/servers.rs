//! The server sampler (Reservoir targets only): once a second during the
//! run, `GET /status` from every node `cluster.json` lists, to see what the
//! servers did while the load ran — memory, snapshots, live holds.
//!
//! Per node and second it records the node's role, live holds, applied and
//! snapshot indexes, its resident memory (`rss_bytes` from `/status`, or,
//! from binaries that do not report it, `VmRSS` of `/proc/{pid}/status`
//! when that pid is still the process `cluster.json` names), and its
//! snapshot counters when the node reports them. A *snapshot event* is a
//! node's `snapshot_index` changing between two of its answered samples.
//!
//! Bounds: each request has [`STATUS_TIMEOUT`] (a node that does not answer
//! in time is recorded as missing for that second; the load never waits for
//! the sampler, which runs in its own task), a response is read up to
//! [`STATUS_RESPONSE_BYTES_MAX`], at most [`NODES_SAMPLED_MAX`] nodes are
//! sampled (the rest are named in a note), and a node gets at most
//! [`TIMELINE_SECONDS_MAX`] rows, as the rest of the timeline; snapshot
//! events are at most one per node per row.

use std::io::Read as _;
use std::time::Duration;

use reservoir_client::{HostPort, Role};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics::TIMELINE_SECONDS_MAX;
use crate::target::reservoir::ClusterNode;

/// How often every node is sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a node has to answer `/status` before it counts as missing for
/// that second.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Most bytes of one `/status` response read (it lists every SKU's bucket;
/// 100,000 SKUs take about 8 MB). A longer one counts as missing.
pub const STATUS_RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most nodes sampled.
pub const NODES_SAMPLED_MAX: usize = 64;
/// Most bytes read of a `/proc/{pid}/...` file.
pub const PROC_FILE_BYTES_MAX: u64 = 64 * 1024;
/// Longest role name or error message kept.
pub const TEXT_BYTES_MAX: usize = 200;
/// Snapshot events listed in the terminal summary (report.json has all).
pub const SNAPSHOT_EVENTS_SHOWN_MAX: usize = 30;

/// `/status` as the client crate reads it.
pub use reservoir_client::{NodeStatus, SnapshotStats};

/// Parses a `/status` body.
pub fn parse_status(body: &[u8]) -> Result<NodeStatus, String> {
    serde_json::from_slice(body).map_err(|e| format!("/status is not the expected JSON: {e}"))
}

/// `GET /status` from `http` within `timeout`.
pub async fn fetch_status(http: impl Into<HostPort>, timeout: Duration) -> Result<NodeStatus, String> {
    let (code, body) =
        reservoir_client::http::get_bounded(http, "/status", timeout, STATUS_RESPONSE_BYTES_MAX)
            .await
            .map_err(|e| format!("GET /status: {e}"))?;
    if code != 200 {
        return Err(format!("GET /status: {code}"));
    }
    parse_status(body.as_bytes())
}

/// Where a sample's RSS came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RssSource {
    /// The node's own `rss_bytes`.
    Status,
    /// `VmRSS` of `/proc/{pid}/status` on this machine.
    Proc,
}

/// `VmRSS` of a `/proc/{pid}/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

fn read_bounded(path: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(PROC_FILE_BYTES_MAX)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// The RSS of local process `pid` from `/proc`, if it exists and, when
/// `cmd` is given, was started as `cmd[0]` (a pid reused by another
/// process is not read).
pub fn proc_rss_bytes(pid: u32, cmd: &[String]) -> Option<u64> {
    if let Some(exe) = cmd.first() {
        let cmdline = read_bounded(&format!("/proc/{pid}/cmdline"))?;
        let argv0 = cmdline.split(|b| *b == 0).next()?;
        if argv0 != exe.as_bytes() {
            return None;
        }
    }
    let status = read_bounded(&format!("/proc/{pid}/status"))?;
    parse_vm_rss(&String::from_utf8_lossy(&status))
}

/// One node in one second.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeSample {
    /// Seconds since the start of the load when the request was sent.
    pub t_s: f64,
    /// The node did not answer `/status` in time (or not with its JSON);
    /// only the RSS from `/proc` may then be known.
    pub missing: bool,
    /// Its role.
    pub role: Option<Role>,
    /// Live holds in its region state.
    pub holds: Option<u64>,
    /// Last log index applied.
    pub applied_index: Option<u64>,
    /// Last log index covered by a snapshot.
    pub snapshot_index: Option<u64>,
    /// Resident memory.
    pub rss_bytes: Option<u64>,
    /// Where `rss_bytes` came from.
    pub rss_source: Option<RssSource>,
    /// Snapshot counters, when the node reports them.
    pub snapshots: Option<SnapshotStats>,
}

/// A node's snapshot index changed between two of its answered samples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnapshotEvent {
    /// When the sample that saw the new index was taken.
    pub t_s: f64,
    /// The node.
    pub node: u64,
    /// Its region.
    pub region: String,
    /// The snapshot index before.
    pub previous_index: Option<u64>,
    /// The new snapshot index.
    pub index: Option<u64>,
    /// `built` or `installed` when the node's counters tell, else `None`.
    pub kind: Option<String>,
    /// How long the build took, when the node reports the build of this
    /// index.
    pub build_ms: Option<u64>,
    /// The snapshot's size, likewise.
    pub bytes: Option<u64>,
}

/// Every sample of one node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeSeries {
    /// Node id.
    pub id: u64,
    /// Its region.
    pub region: String,
    /// Its HTTP address.
    pub http: Option<String>,
    /// Its pid per `cluster.json`.
    pub pid: Option<u32>,
    /// One row per second, at most [`TIMELINE_SECONDS_MAX`].
    pub samples: Vec<NodeSample>,
    /// The last reason a sample was missing.
    pub last_error: Option<String>,
}

/// What the sampler saw.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServerSamples {
    /// One series per sampled node.
    pub nodes: Vec<NodeSeries>,
    /// Snapshot events, in time order.
    pub snapshot_events: Vec<SnapshotEvent>,
    /// What was left out.
    pub notes: Vec<String>,
}

fn short(text: &str) -> String {
    let mut end = text.len().min(TEXT_BYTES_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// What one round learnt about one node: its `/status` (or why not) and
/// its RSS from `/proc` (read only when `/status` has none).
pub struct Observation {
    /// The parsed `/status`, or why there is none.
    pub status: Result<NodeStatus, String>,
    /// `VmRSS` from `/proc`, if read.
    pub proc_rss_bytes: Option<u64>,
}

impl ServerSamples {
    /// Empty series for `nodes` (at most [`NODES_SAMPLED_MAX`]; the rest
    /// are noted and left out).
    pub fn new(nodes: &[ClusterNode]) -> ServerSamples {
        let mut notes = Vec::new();
        if nodes.len() > NODES_SAMPLED_MAX {
            notes.push(format!(
                "{} nodes in cluster.json; only the first {NODES_SAMPLED_MAX} were sampled",
                nodes.len()
            ));
        }
        ServerSamples {
            nodes: nodes
                .iter()
                .take(NODES_SAMPLED_MAX)
                .map(|n| NodeSeries {
                    id: n.id,
                    region: n.region.clone(),
                    http: n.http.as_ref().map(|a| a.to_string()),
                    pid: n.pid,
                    samples: Vec::new(),
                    last_error: None,
                })
                .collect(),
            snapshot_events: Vec::new(),
            notes,
        }
    }

    /// True when no node takes another row.
    pub fn full(&self) -> bool {
        self.nodes.iter().all(|n| n.samples.len() >= TIMELINE_SECONDS_MAX)
    }

    /// Records one round taken at `t_s`: one observation per node, in the
    /// order of [`ServerSamples::nodes`] (extra ones are ignored). Notes a
    /// snapshot event for every node whose snapshot index differs from its
    /// previous answered sample's.
    pub fn record(&mut self, t_s: f64, round: Vec<Observation>) {
        for (series, seen) in self.nodes.iter_mut().zip(round) {
            if series.samples.len() >= TIMELINE_SECONDS_MAX {
                continue;
            }
            let from_proc = seen.proc_rss_bytes.map(|b| (b, RssSource::Proc));
            let sample = match seen.status {
                Ok(status) => {
                    let rss = status.rss_bytes.map(|b| (b, RssSource::Status)).or(from_proc);
                    NodeSample {
                        t_s,
                        missing: false,
                        role: Some(status.role),
                        holds: Some(status.holds),
                        applied_index: status.applied_index,
                        snapshot_index: status.snapshot_index,
                        rss_bytes: rss.map(|r| r.0),
                        rss_source: rss.map(|r| r.1),
                        snapshots: status.snapshots,
                    }
                }
                Err(e) => {
                    series.last_error = Some(short(&e));
                    NodeSample {
                        t_s,
                        missing: true,
                        role: None,
                        holds: None,
                        applied_index: None,
                        snapshot_index: None,
                        rss_bytes: from_proc.map(|r| r.0),
                        rss_source: from_proc.map(|r| r.1),
                        snapshots: None,
                    }
                }
            };
            if !sample.missing
                && let Some(previous) = series.samples.iter().rev().find(|s| !s.missing)
                && previous.snapshot_index != sample.snapshot_index
            {
                self.snapshot_events
                    .push(snapshot_event(series.id, &series.region, previous, &sample));
            }
            series.samples.push(sample);
        }
    }
}

/// The event of `now`'s snapshot index differing from `before`'s.
fn snapshot_event(node: u64, region: &str, before: &NodeSample, now: &NodeSample) -> SnapshotEvent {
    let (mut kind, mut build_ms, mut bytes) = (None, None, None);
    if let Some(stats) = &now.snapshots {
        let earlier = before.snapshots.clone().unwrap_or_default();
        let built = stats.built > earlier.built;
        if built {
            kind = Some("built".to_string());
        } else if stats.installed > earlier.installed {
            kind = Some("installed".to_string());
        }
        if built || (stats.last_index.is_some() && stats.last_index == now.snapshot_index) {
            build_ms = Some(stats.last_build_ms);
            bytes = Some(stats.last_bytes);
        }
    }
    SnapshotEvent {
        t_s: now.t_s,
        node,
        region: region.to_string(),
        previous_index: before.snapshot_index,
        index: now.snapshot_index,
        kind,
        build_ms,
        bytes,
    }
}

/// Samples every node of `nodes` each [`SAMPLE_INTERVAL`] from `start`
/// until `stop_rx` turns true (or every series is full).
pub async fn sample(
    nodes: Vec<ClusterNode>,
    start: Instant,
    mut stop_rx: watch::Receiver<bool>,
) -> ServerSamples {
    let mut out = ServerSamples::new(&nodes);
    let nodes: Vec<ClusterNode> = nodes.into_iter().take(NODES_SAMPLED_MAX).collect();
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !out.full() {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop_rx.wait_for(|s| *s) => break,
        }
        // Milliseconds are plenty for one sample a second.
        let t_s = (start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        let mut requests = JoinSet::new();
        for (i, node) in nodes.iter().enumerate() {
            let http = node.http.clone();
            requests.spawn(async move {
                let status = match http {
                    Some(addr) => fetch_status(addr, STATUS_TIMEOUT).await,
                    None => Err("cluster.json gives no http address".to_string()),
                };
                (i, status)
            });
        }
        let mut statuses: Vec<Option<Result<NodeStatus, String>>> = vec![None; nodes.len()];
        while let Some(done) = requests.join_next().await {
            if let Ok((i, status)) = done
                && let Some(slot) = statuses.get_mut(i)
            {
                *slot = Some(status);
            }
        }
        let round = nodes
            .iter()
            .zip(statuses)
            .map(|(node, status)| {
                let status = status.unwrap_or_else(|| Err("the request task failed".into()));
                let has_rss = matches!(&status, Ok(s) if s.rss_bytes.is_some());
                Observation {
                    proc_rss_bytes: match (has_rss, node.pid) {
                        (false, Some(pid)) => proc_rss_bytes(pid, &node.cmd),
                        _ => None,
                    },
                    status,
                }
            })
            .collect();
        out.record(t_s, round);
    }
    out
}

/// One node's figures over the run, with its samples.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeReport {
    /// Node id.
    pub id: u64,
    /// Its region.
    pub region: String,
    /// Its HTTP address.
    pub http: Option<String>,
    /// Its role at its last answered sample.
    pub role_last: Option<Role>,
    /// Samples it answered.
    pub samples_answered: u64,
    /// Samples it did not answer in time.
    pub samples_missing: u64,
    /// The last reason a sample was missing.
    pub last_error: Option<String>,
    /// RSS at the first sample that has one.
    pub rss_first_bytes: Option<u64>,
    /// Highest RSS sampled.
    pub rss_peak_bytes: Option<u64>,
    /// RSS at the last sample that has one.
    pub rss_last_bytes: Option<u64>,
    /// Lowest RSS sampled in the last half of the load.
    pub rss_last_half_min_bytes: Option<u64>,
    /// Highest RSS sampled in the last half of the load.
    pub rss_last_half_max_bytes: Option<u64>,
    /// Where its RSS came from (its last sample with one).
    pub rss_source: Option<RssSource>,
    /// Snapshot events seen on this node.
    pub snapshot_events: u64,
    /// Snapshots built during the run, per the node's own counters
    /// (last sample's count less the first's).
    pub snapshots_built: Option<u64>,
    /// Snapshots installed during the run, likewise.
    pub snapshots_installed: Option<u64>,
    /// Every sample, one per second.
    pub samples: Vec<NodeSample>,
}

/// The report's `servers` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServersReport {
    /// How often each node was sampled.
    pub interval_ms: u64,
    /// How long a node had to answer.
    pub timeout_ms: u64,
    /// The last half of the load, over which `rss_last_half_*` are taken:
    /// from this many seconds since the start...
    pub last_half_from_s: f64,
    /// ...to this many (the end of the load).
    pub last_half_to_s: f64,
    /// Per node.
    pub nodes: Vec<NodeReport>,
    /// Every snapshot event, in time order.
    pub snapshot_events: Vec<SnapshotEvent>,
    /// What was left out.
    pub notes: Vec<String>,
}

impl ServersReport {
    /// The section of a run whose load lasted `load_s` seconds.
    pub fn build(samples: &ServerSamples, load_s: f64) -> ServersReport {
        let (from_s, to_s) = (load_s / 2.0, load_s);
        let nodes = samples
            .nodes
            .iter()
            .map(|n| {
                let rss: Vec<(f64, u64)> = n
                    .samples
                    .iter()
                    .filter_map(|s| s.rss_bytes.map(|b| (s.t_s, b)))
                    .collect();
                let last_half = rss
                    .iter()
                    .filter(|(t, _)| *t >= from_s && *t <= to_s)
                    .map(|(_, b)| *b);
                let answered: Vec<&NodeSample> = n.samples.iter().filter(|s| !s.missing).collect();
                let stats: Vec<&SnapshotStats> =
                    n.samples.iter().filter_map(|s| s.snapshots.as_ref()).collect();
                let delta = |f: fn(&SnapshotStats) -> u64| match (stats.first(), stats.last()) {
                    (Some(a), Some(b)) => Some(f(b).saturating_sub(f(a))),
                    _ => None,
                };
                NodeReport {
                    id: n.id,
                    region: n.region.clone(),
                    http: n.http.clone(),
                    role_last: answered.last().and_then(|s| s.role),
                    samples_answered: answered.len() as u64,
                    samples_missing: (n.samples.len() - answered.len()) as u64,
                    last_error: n.last_error.clone(),
                    rss_first_bytes: rss.first().map(|r| r.1),
                    rss_peak_bytes: rss.iter().map(|r| r.1).max(),
                    rss_last_bytes: rss.last().map(|r| r.1),
                    rss_last_half_min_bytes: last_half.clone().min(),
                    rss_last_half_max_bytes: last_half.max(),
                    rss_source: n.samples.iter().rev().find_map(|s| s.rss_source),
                    snapshot_events: samples.snapshot_events.iter().filter(|e| e.node == n.id).count() as u64,
                    snapshots_built: delta(|s| s.built),
                    snapshots_installed: delta(|s| s.installed),
                    samples: n.samples.clone(),
                }
            })
            .collect();
        ServersReport {
            interval_ms: SAMPLE_INTERVAL.as_millis() as u64,
            timeout_ms: STATUS_TIMEOUT.as_millis() as u64,
            last_half_from_s: from_s,
            last_half_to_s: to_s,
            nodes,
            snapshot_events: samples.snapshot_events.clone(),
            notes: samples.notes.clone(),
        }
    }

    /// Per region, `(t_s, holds)` of whichever node answered as the
    /// region's leader at each sample, in time order.
    pub fn leader_holds(&self) -> std::collections::BTreeMap<String, Vec<(f64, u64)>> {
        let mut out: std::collections::BTreeMap<String, Vec<(f64, u64)>> = Default::default();
        for n in &self.nodes {
            for s in &n.samples {
                if let (Some(Role::Leader), Some(holds)) = (s.role, s.holds) {
                    out.entry(n.region.clone()).or_default().push((s.t_s, holds));
                }
            }
        }
        for points in out.values_mut() {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD_STATUS: &str = r#"{"node_id":1,"region":"us-east","standalone":true,"role":"leader","term":1,
        "leader":1,"applied_index":7,"last_log_index":7,"snapshot_index":null,"members":{"1":"127.0.0.1:1"},
        "holds":12,"next_expiry_ms":null,"outbox_last_seq":0,"settled_up_to":0,
        "buckets":{"a":{"available":1,"held":2,"confirmed":0}},"ledger":null}"#;

    /// `/status` of today's nodes (no RSS, no snapshot counters) parses with
    /// those absent; with the new fields it reads them, snapshot counters
    /// partly given included; a body that is not the JSON is an error.
    #[test]
    fn status_with_and_without_new_fields() {
        let old = parse_status(OLD_STATUS.as_bytes()).unwrap();
        assert_eq!(
            (old.node_id, old.role.as_str(), old.holds, old.applied_index),
            (1, "leader", 12, Some(7))
        );
        assert_eq!(
            (old.snapshot_index, old.rss_bytes, old.snapshots.clone()),
            (None, None, None)
        );
        let new = OLD_STATUS.replace(
            r#""ledger":null"#,
            r#""ledger":null,"rss_bytes":123456789,"snapshots":{"built":3,"installed":1,
               "last_index":100000,"last_build_ms":840,"last_bytes":74000000}"#,
        );
        let new = parse_status(new.as_bytes()).unwrap();
        assert_eq!(new.rss_bytes, Some(123_456_789));
        assert_eq!(
            new.snapshots,
            Some(SnapshotStats {
                built: 3,
                installed: 1,
                last_index: Some(100_000),
                last_build_ms: 840,
                last_bytes: 74_000_000,
                ..SnapshotStats::default()
            })
        );
        let partial = OLD_STATUS.replace(
            r#""ledger":null"#,
            r#""ledger":null,"snapshots":{"built":2,"last_index":null}"#,
        );
        let partial = parse_status(partial.as_bytes()).unwrap();
        assert_eq!(
            partial.snapshots.map(|s| (s.built, s.installed, s.last_index)),
            Some((2, 0, None))
        );
        assert!(parse_status(b"<html>busy</html>").is_err());
        assert!(
            parse_status(br#"{"role":"leader"}"#).is_err(),
            "node_id is required"
        );
    }

    /// VmRSS is read in kB and returned in bytes; our own process has one;
    /// a pid started by another command is not read.
    #[test]
    fn rss_from_proc() {
        let text = "Name:\treservoir\nVmPeak:\t  999 kB\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        assert_eq!(parse_vm_rss(text), Some(2_048 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t 5 MB\n"), None);
        let me = std::process::id();
        assert!(proc_rss_bytes(me, &[]).is_some_and(|b| b > 0));
        assert_eq!(proc_rss_bytes(me, &["/no/such/reservoir".to_string()]), None);
    }

    fn node(id: u64, region: &str) -> ClusterNode {
        ClusterNode {
            id,
            region: region.into(),
            grpc: "127.0.0.1:1".parse().unwrap(),
            peer: None,
            http: Some("127.0.0.1:2".parse().unwrap()),
            pid: None,
            cmd: Vec::new(),
        }
    }

    fn answer(role: &str, holds: u64, snapshot_index: Option<u64>, rss: Option<u64>) -> Observation {
        Observation {
            status: Ok(NodeStatus {
                node_id: 0,
                role: role.into(),
                applied_index: Some(1),
                snapshot_index,
                holds,
                rss_bytes: rss,
                snapshots: None,
                ..NodeStatus::default()
            }),
            proc_rss_bytes: None,
        }
    }

    fn silent(proc_rss: Option<u64>) -> Observation {
        Observation {
            status: Err("no answer within 500ms".into()),
            proc_rss_bytes: proc_rss,
        }
    }

    /// The summary numbers: RSS first / peak / last, min and max over the
    /// last half of the load only, answered and missing samples, snapshot
    /// events only where the index changed between answered samples (a
    /// missing second in between does not hide or invent one), the
    /// leader's holds, and /proc's RSS used when /status has none.
    #[test]
    fn summary_numbers() {
        const MB: u64 = 1024 * 1024;
        let mut s = ServerSamples::new(&[node(1, "us-east"), node(2, "us-east")]);
        // Node 1: RSS 100, 300 (peak, first half), 150, 200, 180 MB over a 10 s load
        // (t = 0, 2, 5, 8, 11: the last one is in the drain); one silent second.
        let node1 = [
            (0.0, answer("leader", 0, None, Some(100 * MB))),
            (2.0, answer("leader", 50, Some(10), Some(300 * MB))),
            (4.0, silent(None)),
            (5.0, answer("leader", 90, Some(20), Some(150 * MB))),
            (8.0, answer("leader", 100, Some(20), Some(200 * MB))),
            (11.0, answer("follower", 40, Some(20), Some(180 * MB))),
        ];
        // Node 2: old binary, RSS from /proc; silent at t = 4 with /proc still read.
        let node2 = [
            (0.0, answer("follower", 0, None, None)),
            (2.0, answer("follower", 50, None, None)),
            (4.0, silent(Some(70 * MB))),
            (5.0, answer("follower", 90, None, None)),
            (8.0, answer("follower", 100, Some(20), None)),
            (11.0, answer("leader", 40, Some(20), None)),
        ];
        for (i, ((t, a), (_, mut b))) in node1.into_iter().zip(node2).enumerate() {
            if b.status.is_ok() {
                b.proc_rss_bytes = Some((60 + i as u64) * MB);
            }
            s.record(t, vec![a, b]);
        }
        let r = ServersReport::build(&s, 10.0);
        let (n1, n2) = (&r.nodes[0], &r.nodes[1]);
        assert_eq!((n1.samples_answered, n1.samples_missing), (5, 1));
        assert_eq!(n1.last_error.as_deref(), Some("no answer within 500ms"));
        assert_eq!(
            (n1.rss_first_bytes, n1.rss_peak_bytes, n1.rss_last_bytes),
            (Some(100 * MB), Some(300 * MB), Some(180 * MB))
        );
        // Last half of a 10 s load: t = 5 and 8.
        assert_eq!(
            (n1.rss_last_half_min_bytes, n1.rss_last_half_max_bytes),
            (Some(150 * MB), Some(200 * MB))
        );
        assert_eq!(
            (n1.rss_source, n1.role_last),
            (Some(RssSource::Status), Some(Role::Follower))
        );
        assert_eq!(
            (n2.rss_first_bytes, n2.rss_peak_bytes, n2.rss_last_bytes),
            (Some(60 * MB), Some(70 * MB), Some(65 * MB))
        );
        assert_eq!(
            (n2.rss_last_half_min_bytes, n2.rss_last_half_max_bytes),
            (Some(63 * MB), Some(64 * MB))
        );
        assert_eq!(n2.rss_source, Some(RssSource::Proc));
        // Node 1: None -> 10 at t = 2, 10 -> 20 at t = 5 (across the silent
        // second); node 2: None -> 20 at t = 8.
        let events: Vec<(f64, u64, Option<u64>, Option<u64>)> = r
            .snapshot_events
            .iter()
            .map(|e| (e.t_s, e.node, e.previous_index, e.index))
            .collect();
        assert_eq!(
            events,
            vec![
                (2.0, 1, None, Some(10)),
                (5.0, 1, Some(10), Some(20)),
                (8.0, 2, None, Some(20))
            ]
        );
        assert_eq!((n1.snapshot_events, n2.snapshot_events), (2, 1));
        assert_eq!((n1.snapshots_built, n1.snapshots_installed), (None, None));
        let holds = &r.leader_holds()["us-east"];
        assert_eq!(
            holds,
            &vec![(0.0, 0), (2.0, 50), (5.0, 90), (8.0, 100), (11.0, 40)]
        );
    }

    /// With the node's snapshot counters, an event says whether the node
    /// built or installed the snapshot, and gives the build's time and size
    /// only when they are of this index; the run's counts are the counters'
    /// growth.
    #[test]
    fn snapshot_events_with_counters() {
        let with = |index: u64, built: u64, installed: u64, last_index: u64| Observation {
            status: Ok(NodeStatus {
                node_id: 1,
                role: "follower".into(),
                snapshot_index: Some(index),
                snapshots: Some(SnapshotStats {
                    built,
                    installed,
                    last_index: Some(last_index),
                    last_build_ms: 700 + built,
                    last_bytes: 1_000 * built,
                    ..SnapshotStats::default()
                }),
                ..NodeStatus::default()
            }),
            proc_rss_bytes: None,
        };
        let mut s = ServerSamples::new(&[node(1, "us-east")]);
        s.record(0.0, vec![with(100, 1, 0, 100)]);
        s.record(1.0, vec![with(200, 2, 0, 200)]);
        s.record(2.0, vec![with(300, 2, 1, 200)]);
        let r = ServersReport::build(&s, 3.0);
        let e = &r.snapshot_events;
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].kind.as_deref(), e[0].build_ms, e[0].bytes),
            (Some("built"), Some(702), Some(2_000))
        );
        assert_eq!(
            (e[1].kind.as_deref(), e[1].build_ms, e[1].bytes),
            (Some("installed"), None, None)
        );
        assert_eq!(
            (r.nodes[0].snapshots_built, r.nodes[0].snapshots_installed),
            (Some(1), Some(1))
        );
    }

    /// Against two local stand-ins for nodes (no cluster): one answers
    /// `/status`, one accepts the connection and never answers; a round
    /// finishes within the timeout and records the second as missing.
    #[tokio::test]
    async fn a_silent_node_is_missing_not_waited_for() {
        let answering = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = (answering.local_addr().unwrap(), silent.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut c, _)) = answering.accept().await {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
                let body = OLD_STATUS;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = c.write_all(reply.as_bytes()).await;
            }
        });
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                open.push(c);
            }
        });
        let mut nodes = vec![node(1, "us-east"), node(2, "us-east")];
        nodes[0].http = Some(a.into());
        nodes[1].http = Some(b.into());
        let (stop_tx, stop_rx) = watch::channel(false);
        let started = std::time::Instant::now();
        let task = tokio::spawn(sample(nodes, Instant::now(), stop_rx));
        // The first round starts at once; stop after it (before the second, at 1 s).
        tokio::time::sleep(STATUS_TIMEOUT + Duration::from_millis(300)).await;
        stop_tx.send(true).unwrap();
        let out = task.await.unwrap();
        held.abort();
        assert!(started.elapsed() < Duration::from_secs(1) + STATUS_TIMEOUT);
        assert_eq!(out.nodes[0].samples.len(), 1);
        assert_eq!(out.nodes[1].samples.len(), 1);
        let (s1, s2) = (&out.nodes[0].samples[0], &out.nodes[1].samples[0]);
        assert!(!s1.missing && s1.holds == Some(12) && s1.role == Some(Role::Leader));
        assert!(s2.missing && s2.holds.is_none());
        assert!(
            out.nodes[1]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("no answer"))
        );
    }
}
