//! The internal control plane between regions and the ledger
//! (`reservoir.internal.v1.Control`): the rebalancer's transfers, the
//! reconciler's settlement, top-up requests, and availability gossip.
//!
//! Messages are the Rust types below, bincode-encoded; both ends run the same
//! build. Any node accepts any call and forwards it once to the leader of the
//! group it is for, like the public API. This module holds the messages and
//! the client ([`ControlClient`]); the server side is
//! [`crate::server::service::control`]. Calls travel over a
//! [`ControlTransport`]: gRPC on the node's peer channels ([`GrpcControl`]),
//! or the whole-cluster simulation's network.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reservoir_client::Channels;
use reservoir_tokens::audit::RegionBooks;
use reservoir_tokens::ledger::LedgerSku;
use reservoir_tokens::{
    AppliedTransfer, Bucket, LedgerOp, LedgerOutcome, Millis, NodeId, OutboxEntry, RegionId, RegionOp,
    RegionOutcome, RegionState, SettleEntry, Sku, Transfer, TransferId, Units,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::Status;
use tonic::transport::Channel;

use self::pb::control_client::ControlClient as GrpcControlClient;
use self::pb::{ControlMessage, ControlReply};
use crate::server::availability::Digest;
use crate::server::config::Peer;

/// Generated code for the control plane's gRPC service,
/// `reservoir.internal.v1.Control` (`node/proto/`): messages carry a
/// bincode payload of the types below.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("reservoir.internal.v1");
}

/// Largest control message (a report carries at most one settlement page).
pub const CONTROL_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Most encoded bytes of outbox entries in one report, and so in one
/// settlement page (the ledger's `Settle` command carries the same entries
/// without their reservation and order ids, so it is smaller). Far under
/// [`CONTROL_MESSAGE_BYTES_MAX`] and under a Raft batch's byte bound
/// (`reservoir_raft::group::BATCH_BYTES_MAX`, 4 MiB): a page of the longest
/// carts (64 lines of 64-byte SKUs, a 128-byte order id; about 5.3 KB an
/// entry) holds about 195 entries, a page of one-line carts the whole
/// [`SETTLE_BATCH_MAX`](reservoir_tokens::limits::SETTLE_BATCH_MAX).
pub const REPORT_OUTBOX_BYTES_MAX: usize = 1024 * 1024;

/// Bytes of a report kept free beside its measured parts, for the reply's
/// own framing (the enum tag, the gRPC message around the payload).
pub const REPORT_MARGIN_BYTES: usize = 64 * 1024;

/// A call for a region group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RegionCall {
    /// Propose a grant, revoke or settled acknowledgement on the leader.
    Apply(RegionOp),
    /// What the ledger leader needs for a round (linearizable, on the leader).
    Report(ReportRequest),
    /// Another region's availability counters; answered with ours.
    Gossip(Digest),
    /// The region's whole state, read linearizably on its leader, for a
    /// cluster backup (see [`crate::server::backup`]).
    Backup,
}

/// What a report should include.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportRequest {
    /// Outbox entries after this sequence number (`None`: after the region's
    /// own settled watermark).
    pub outbox_after: Option<u64>,
    /// At most this many outbox entries.
    pub outbox_max: usize,
    /// At most this many encoded bytes of outbox entries (the region also
    /// keeps the whole report under [`CONTROL_MESSAGE_BYTES_MAX`]).
    pub outbox_bytes_max: usize,
    /// Transfers to report on, if the region applied them.
    pub transfers: Vec<TransferId>,
    /// For the audit: the ledger's settlement watermark for this region.
    /// The region answers the units per SKU of its outbox entries after its
    /// own acknowledged watermark up to this one (settled at the ledger, not
    /// yet acknowledged here), so the audit needs no outbox entries.
    pub unacked_up_to: Option<u64>,
}

/// A region's answer to a control call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum RegionReply {
    /// The outcome of an `Apply`.
    Applied(RegionOutcome),
    /// A report.
    Report(RegionReport),
    /// The region's availability counters.
    Gossip(Digest),
    /// The region's state for a backup.
    Backup(crate::server::backup::GroupState),
}

/// A region's state as the ledger leader sees it for one round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RegionReport {
    /// The region.
    pub region: RegionId,
    /// The region leader that answered.
    pub leader_id: NodeId,
    /// The region's logical clock when read.
    pub clock_ms: Millis,
    /// Buckets by SKU.
    pub buckets: BTreeMap<Sku, Bucket>,
    /// Units requested per SKU over the demand horizon (met or not).
    pub demand: BTreeMap<Sku, Units>,
    /// Outbox entries asked for, oldest first: consecutive, at most
    /// `outbox_max` of them and at most `outbox_bytes_max` encoded bytes.
    pub outbox: Vec<OutboxEntry>,
    /// True when the outbox holds entries after the last one in `outbox`
    /// (the page was full): the ledger asks again after settling this page.
    pub outbox_more: bool,
    /// The last outbox sequence number written.
    pub last_outbox_seq: u64,
    /// The outbox sequence number the ledger acknowledged.
    pub settled_up_to: u64,
    /// When the oldest unsettled sale was confirmed.
    pub oldest_unsettled_ms: Option<Millis>,
    /// The asked-about transfers the region applied.
    pub transfers: BTreeMap<TransferId, AppliedTransfer>,
    /// The `unacked_up_to` asked for, if any, that `unacked` is summed to.
    pub unacked_up_to: Option<u64>,
    /// Units per SKU of outbox entries after `settled_up_to` up to
    /// `unacked_up_to`.
    pub unacked: BTreeMap<Sku, Units>,
}

/// What a region needs to build a [`RegionReport`] besides its state.
#[derive(Clone, Debug)]
pub struct ReportContext {
    /// The region.
    pub region: RegionId,
    /// This node (the leader answering).
    pub leader_id: NodeId,
    /// Units requested per SKU over the demand horizon.
    pub demand: BTreeMap<Sku, Units>,
}

/// Builds a region's report from its state, as `request` asks: the outbox
/// page is filled entry by entry, measured with the control encoder, until
/// `outbox_max` entries, `outbox_bytes_max` bytes, or what is left of
/// [`CONTROL_MESSAGE_BYTES_MAX`] after the rest of the report (and
/// [`REPORT_MARGIN_BYTES`]) is reached; `outbox_more` says whether entries
/// were left out.
pub fn build_report(s: &RegionState, context: &ReportContext, request: &ReportRequest) -> RegionReport {
    let settled_up_to = s.settled_up_to();
    let after = request.outbox_after.unwrap_or(settled_up_to).max(settled_up_to);
    let mut unacked: BTreeMap<Sku, Units> = BTreeMap::new();
    if let Some(up_to) = request.unacked_up_to {
        for entry in s.outbox_after(settled_up_to).take_while(|e| e.seq <= up_to) {
            for line in &entry.lines {
                let units = unacked.entry(line.sku.clone()).or_default();
                *units = units.saturating_add(line.quantity);
            }
        }
    }
    let mut report = RegionReport {
        region: context.region.clone(),
        leader_id: context.leader_id,
        clock_ms: s.clock_ms(),
        buckets: s.buckets().map(|(sku, b)| (sku.clone(), b.clone())).collect(),
        demand: context.demand.clone(),
        outbox: Vec::new(),
        outbox_more: false,
        last_outbox_seq: s.last_outbox_seq(),
        settled_up_to,
        oldest_unsettled_ms: s.outbox_after(settled_up_to).next().map(|e| e.confirmed_at_ms),
        transfers: request
            .transfers
            .iter()
            .filter_map(|id| s.transfer(*id).map(|t| (*id, t.clone())))
            .collect(),
        unacked_up_to: request.unacked_up_to,
        unacked,
    };
    // The reply's enum tag and framing are within REPORT_MARGIN_BYTES.
    let rest = encoded_len(&report);
    let room = CONTROL_MESSAGE_BYTES_MAX.saturating_sub(rest.saturating_add(REPORT_MARGIN_BYTES));
    let (outbox, more) = outbox_page(
        s.outbox_after(after),
        request.outbox_max,
        request.outbox_bytes_max.min(room),
    );
    report.outbox = outbox;
    report.outbox_more = more;
    report
}

/// Takes entries from `entries` (oldest first) while they number at most
/// `count_max` and their encoded sizes add up to at most `bytes_max`;
/// returns them and whether any entry was left.
pub fn outbox_page(
    entries: impl Iterator<Item = OutboxEntry>,
    count_max: usize,
    bytes_max: usize,
) -> (Vec<OutboxEntry>, bool) {
    let mut page = Vec::new();
    let mut bytes = 0usize;
    for entry in entries {
        let size = encoded_len(&entry);
        if page.len() >= count_max || bytes.saturating_add(size) > bytes_max {
            return (page, true);
        }
        bytes += size;
        page.push(entry);
    }
    (page, false)
}

/// The `Settle` entries of a page: its outbox entries after the ledger's
/// `watermark`, in order.
pub fn settle_entries(page: &RegionReport, watermark: u64) -> Vec<SettleEntry> {
    page.outbox
        .iter()
        .filter(|e| e.seq > watermark)
        .map(|e| SettleEntry {
            seq: e.seq,
            lines: e.lines.clone(),
        })
        .collect()
}

/// The encoded size of a control payload, as [`encode`] would write it.
pub fn encoded_len<T: Serialize>(value: &T) -> usize {
    // A value `encode` cannot encode counts as too large for any page.
    bincode::serialized_size(value).map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

impl RegionBooks for RegionReport {
    fn region(&self) -> &str {
        &self.region
    }

    fn sku_names(&self) -> Vec<&str> {
        self.buckets.keys().map(String::as_str).collect()
    }

    fn bucket_of(&self, sku: &str) -> Option<Bucket> {
        self.buckets.get(sku).cloned()
    }

    fn applied_transfer(&self, id: TransferId) -> Option<&AppliedTransfer> {
        self.transfers.get(&id)
    }

    fn settled_unacked(&self, sku: &str, watermark: u64) -> Units {
        // The region's own sum when it was asked for this watermark (the
        // audit asks for it, and no outbox entries); else what the outbox
        // page holds.
        if self.unacked_up_to == Some(watermark) {
            return self.unacked.get(sku).copied().unwrap_or(0);
        }
        self.outbox
            .iter()
            .filter(|e| e.seq > self.settled_up_to && e.seq <= watermark)
            .flat_map(|e| e.lines.iter())
            .filter(|l| l.sku == sku)
            .map(|l| l.quantity)
            .sum()
    }
}

/// A call for the ledger group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LedgerCall {
    /// Propose on the ledger leader (AdjustStock from any node).
    Apply(LedgerOp),
    /// A region ran low on a SKU: run a rebalance round now.
    TopUp {
        /// The region.
        region: RegionId,
        /// The SKU.
        sku: Sku,
    },
    /// The ledger's books and the rebalancer's view, for status.
    Summary,
    /// Run the conservation audit now.
    Audit,
    /// A consistent backup of the ledger and every region, between rounds.
    Backup,
}

/// The ledger's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LedgerReply {
    /// The outcome of an `Apply`.
    Applied(LedgerOutcome),
    /// The top-up request was taken.
    TopUpQueued,
    /// The ledger's summary.
    Summary(Box<LedgerSummary>),
    /// A fresh audit.
    Audit(Box<reservoir_tokens::audit::BalanceSheet>),
    /// A backup file (see [`crate::server::backup`]).
    Backup(Vec<u8>),
}

/// The ledger's books and the rebalancer's latest view.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LedgerSummary {
    /// The ledger leader's node id.
    pub leader_id: NodeId,
    /// Per SKU: pool, granted, settled.
    pub skus: BTreeMap<Sku, LedgerSku>,
    /// Transfers in flight.
    pub transfers: Vec<Transfer>,
    /// Per region, from the last round: available/held/confirmed per SKU.
    pub regions: BTreeMap<RegionId, BTreeMap<Sku, Bucket>>,
    /// Per region, the leader that answered the last round.
    pub region_leaders: BTreeMap<RegionId, NodeId>,
    /// Regions the last round could not reach.
    pub unreachable: Vec<RegionId>,
    /// Regions whose part of the last round failed (unreachable ones too),
    /// with the failed step's stable reason (`report`, `transfer`,
    /// `settle`, `settled_ack`, `begin`); the others went on.
    pub failing: BTreeMap<RegionId, String>,
    /// Per region: (unsettled outbox entries, age of the oldest in ms).
    pub settlement_lag: BTreeMap<RegionId, (u64, u64)>,
    /// The last audit, when it ran (ms since the epoch).
    pub last_audit: Option<(Millis, reservoir_tokens::audit::BalanceSheet)>,
}

/// Encodes a control payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Status> {
    bincode::serialize(value).map_err(|e| Status::internal(format!("encode: {e}")))
}

/// Decodes a control payload, bounded by [`CONTROL_MESSAGE_BYTES_MAX`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(CONTROL_MESSAGE_BYTES_MAX as u64)
        .deserialize(bytes)
        .map_err(|e| Status::invalid_argument(format!("undecodable control message: {e}")))
}

/// Calls regions and the ledger over the control plane, trying each of a
/// group's nodes in turn (any node forwards to its leader).
pub struct ControlClient {
    regions: BTreeMap<RegionId, Vec<Peer>>,
    ledger: Vec<Peer>,
    transport: Arc<dyn ControlTransport>,
    /// The node that answered last, per group: tried first next time.
    preferred: Mutex<BTreeMap<String, usize>>,
}

impl ControlClient {
    /// A client that reaches `regions` (name → nodes) and the ledger's nodes
    /// over `channels` (the node's one channel per peer).
    pub fn new(
        regions: BTreeMap<RegionId, Vec<Peer>>,
        ledger: Vec<Peer>,
        channels: Arc<Channels>,
    ) -> ControlClient {
        ControlClient::with_transport(regions, ledger, Arc::new(GrpcControl { channels }))
    }

    /// A client whose calls travel over `transport` (the whole-cluster
    /// simulation's network instead of gRPC).
    pub fn with_transport(
        regions: BTreeMap<RegionId, Vec<Peer>>,
        ledger: Vec<Peer>,
        transport: Arc<dyn ControlTransport>,
    ) -> ControlClient {
        ControlClient {
            regions,
            ledger,
            transport,
            preferred: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every region this client can reach, by name.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }

    /// True when region `region`'s nodes include any of `ids`.
    pub fn region_hosts(&self, region: &str, ids: &std::collections::BTreeSet<u64>) -> bool {
        self.regions
            .get(region)
            .is_some_and(|nodes| nodes.iter().any(|p| ids.contains(&p.id)))
    }

    /// True when the ledger is reachable through this client at all.
    pub fn has_ledger(&self) -> bool {
        !self.ledger.is_empty()
    }

    /// Sends `message` to one of `nodes` (the preferred one first), moving on
    /// to the next on UNAVAILABLE or a transport failure, within `timeout`.
    async fn send(
        &self,
        key: &str,
        nodes: &[Peer],
        message: ControlMessage,
        ledger: bool,
        timeout: Duration,
    ) -> Result<Vec<u8>, Status> {
        if nodes.is_empty() {
            return Err(Status::failed_precondition(format!("no known nodes for {key}")));
        }
        let start = self
            .preferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0);
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = Status::unavailable(format!("{key}: no node answered"));
        for i in 0..nodes.len() {
            let index = (start + i) % nodes.len();
            let addr = nodes[index].peer.to_string();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let call = self.transport.call(&addr, message.clone(), ledger, Some(left));
            match tokio::time::timeout(left, call).await {
                Ok(Ok(reply)) => {
                    self.preferred
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key.to_string(), index);
                    return Ok(reply.payload);
                }
                Ok(Err(status)) if reservoir_client::is_retryable(&status) => last = status,
                Ok(Err(status)) => return Err(status),
                Err(_) => {
                    last = Status::deadline_exceeded(format!("{key}: no answer within {timeout:?}"));
                    break;
                }
            }
        }
        Err(last)
    }

    /// Calls region `region`.
    pub async fn region(
        &self,
        region: &str,
        call: &RegionCall,
        timeout: Duration,
    ) -> Result<RegionReply, Status> {
        let nodes = self.regions.get(region).cloned().unwrap_or_default();
        let message = ControlMessage {
            region: region.to_string(),
            forwarded: false,
            payload: encode(call)?,
        };
        let bytes = self
            .send(&format!("region:{region}"), &nodes, message, false, timeout)
            .await?;
        decode(&bytes)
    }

    /// Calls the ledger.
    pub async fn ledger(&self, call: &LedgerCall, timeout: Duration) -> Result<LedgerReply, Status> {
        let message = ControlMessage {
            region: String::new(),
            forwarded: false,
            payload: encode(call)?,
        };
        let bytes = self.send("ledger", &self.ledger, message, true, timeout).await?;
        decode(&bytes)
    }

    /// Forwards an already-encoded call to the node at `addr` (a follower
    /// passing a call to its leader), marked as forwarded.
    pub async fn forward(
        &self,
        addr: &str,
        mut message: ControlMessage,
        ledger: bool,
    ) -> Result<ControlReply, Status> {
        message.forwarded = true;
        self.transport.call(addr, message, ledger, None).await
    }
}

/// How control calls travel: one call to the node at `addr` (its peer
/// address), on its ledger or region service, within `timeout` if given.
/// gRPC over the node's peer channels in a node ([`GrpcControl`]); the
/// simulated network in the whole-cluster simulation.
pub trait ControlTransport: Send + Sync + 'static {
    /// Sends `message` and waits for the answer.
    fn call(
        &self,
        addr: &str,
        message: ControlMessage,
        ledger: bool,
        timeout: Option<Duration>,
    ) -> reservoir_raft::network::BoxFuture<'_, Result<ControlReply, Status>>;
}

/// Control calls over gRPC on the node's peer channels (mutual TLS unless
/// insecure).
pub struct GrpcControl {
    channels: Arc<Channels>,
}

impl GrpcControl {
    fn client(&self, addr: &str) -> Result<GrpcControlClient<Channel>, Status> {
        let channel = self.channels.get(addr).map_err(Status::internal)?;
        Ok(GrpcControlClient::new(channel)
            .max_decoding_message_size(CONTROL_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(CONTROL_MESSAGE_BYTES_MAX))
    }
}

impl ControlTransport for GrpcControl {
    fn call(
        &self,
        addr: &str,
        message: ControlMessage,
        ledger: bool,
        timeout: Option<Duration>,
    ) -> reservoir_raft::network::BoxFuture<'_, Result<ControlReply, Status>> {
        let client = self.client(addr);
        Box::pin(async move {
            let mut client = client?;
            let mut request = tonic::Request::new(message);
            if let Some(timeout) = timeout {
                request.set_timeout(timeout);
            }
            let reply = if ledger {
                client.ledger(request).await
            } else {
                client.region(request).await
            };
            reply.map(tonic::Response::into_inner)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reservoir_tokens::limits::{
        LINES_PER_RESERVATION_MAX, ORDER_ID_BYTES_MAX, SETTLE_BATCH_MAX, SKU_BYTES_MAX,
    };
    use reservoir_tokens::{LedgerApplied, LedgerCommand, LedgerState, Line, RegionApplied, RegionCommand};

    const REGION: &str = "ap-south";
    const NOW_MS: Millis = 1_700_000_000_000;

    /// The longest SKU there may be, numbered.
    fn long_sku(i: usize) -> Sku {
        let head = format!("sku-{i:02}-");
        format!("{head}{}", "x".repeat(SKU_BYTES_MAX - head.len()))
    }

    fn region_apply(s: &mut RegionState, op: RegionOp) -> RegionApplied {
        s.apply(RegionCommand { now_ms: NOW_MS, op })
            .unwrap_or_else(|r| panic!("region refused: {r}"))
    }

    fn ledger_apply(l: &mut LedgerState, op: LedgerOp) -> LedgerApplied {
        l.apply(LedgerCommand { now_ms: NOW_MS, op })
            .unwrap_or_else(|r| panic!("ledger refused: {r}"))
    }

    /// A region and a ledger that granted it `units` of each SKU, both real
    /// state machines.
    fn granted(skus: &[Sku], units: Units) -> (RegionState, LedgerState) {
        let mut region = RegionState::new(REGION);
        let mut ledger = LedgerState::default();
        for sku in skus {
            ledger_apply(
                &mut ledger,
                LedgerOp::AdjustStock {
                    request_id: format!("stock-{sku}"),
                    sku: sku.clone(),
                    delta: units as i64,
                },
            );
            let LedgerApplied::Begun(t) = ledger_apply(
                &mut ledger,
                LedgerOp::BeginGrant {
                    region: REGION.into(),
                    sku: sku.clone(),
                    units,
                },
            ) else {
                panic!("no grant begun")
            };
            region_apply(
                &mut region,
                RegionOp::Grant {
                    transfer_id: t.id,
                    sku: sku.clone(),
                    units,
                    done_below: ledger.done_below(REGION),
                },
            );
            ledger_apply(&mut ledger, LedgerOp::CompleteGrant { transfer_id: t.id });
        }
        (region, ledger)
    }

    /// An outbox of the longest carts (most lines, longest SKUs and order ids) that would not fit one control message is reported in pages under the limit, and settling page by page settles every sale once, without gaps.
    #[test]
    fn a_report_over_the_message_limit_is_split_and_every_page_settles() {
        let skus: Vec<Sku> = (0..LINES_PER_RESERVATION_MAX).map(long_sku).collect();
        let carts = SETTLE_BATCH_MAX as u64;
        let (mut region, mut ledger) = granted(&skus, carts);
        for n in 0..carts {
            let RegionApplied::Reservation(r) = region_apply(
                &mut region,
                RegionOp::Reserve {
                    owner: "shop".into(),
                    request_id: format!("cart-{n}"),
                    lines: skus.iter().map(|sku| Line::new(sku.clone(), 1)).collect(),
                    ttl_ms: 0,
                    allow_partial: false,
                    nonce: n + 1,
                },
            ) else {
                panic!("no reservation")
            };
            let order_id = format!("order-{n:08}-{}", "o".repeat(ORDER_ID_BYTES_MAX - 15));
            assert_eq!(order_id.len(), ORDER_ID_BYTES_MAX);
            region_apply(
                &mut region,
                RegionOp::Confirm {
                    id: r.id,
                    owner: "shop".into(),
                    order_id,
                    lines: Vec::new(),
                },
            );
        }
        // The whole outbox, as one report asked for the ledger's batch of
        // 4,096 entries used to carry it, does not fit one control message.
        let unpaged: Vec<OutboxEntry> = region.outbox_after(0).take(SETTLE_BATCH_MAX).collect();
        let unpaged_bytes = encoded_len(&unpaged);
        assert!(
            unpaged_bytes > CONTROL_MESSAGE_BYTES_MAX,
            "the scenario must exceed the limit: {unpaged_bytes} bytes"
        );

        let context = ReportContext {
            region: REGION.into(),
            leader_id: 1,
            demand: BTreeMap::new(),
        };
        let mut pages = 0;
        loop {
            let watermark = ledger.watermark(REGION);
            let request = ReportRequest {
                outbox_after: Some(watermark),
                outbox_max: SETTLE_BATCH_MAX,
                outbox_bytes_max: REPORT_OUTBOX_BYTES_MAX,
                transfers: Vec::new(),
                unacked_up_to: None,
            };
            let report = build_report(&region, &context, &request);
            let reply = encode(&RegionReply::Report(report.clone())).expect("a report encodes");
            assert!(
                reply.len() <= CONTROL_MESSAGE_BYTES_MAX,
                "page {pages}: a {}-byte report over the {CONTROL_MESSAGE_BYTES_MAX}-byte limit",
                reply.len()
            );
            assert!(
                encoded_len(&report.outbox) <= REPORT_OUTBOX_BYTES_MAX + 8,
                "page {pages}: outbox of {} bytes",
                encoded_len(&report.outbox)
            );
            let decoded: RegionReply = decode(&reply).expect("the ledger host decodes it");
            let RegionReply::Report(report) = decoded else {
                panic!("not a report")
            };
            let entries = settle_entries(&report, watermark);
            if entries.is_empty() {
                assert!(!report.outbox_more, "an empty page says there is more");
                break;
            }
            assert_eq!(
                entries[0].seq,
                watermark + 1,
                "page {pages} starts after the watermark"
            );
            assert_eq!(
                report.outbox_more,
                entries.last().map(|e| e.seq) < Some(region.last_outbox_seq()),
                "page {pages}: outbox_more says whether entries were left"
            );
            let settle = LedgerOp::Settle {
                region: REGION.into(),
                entries,
            };
            assert!(
                encoded_len(&settle) <= REPORT_OUTBOX_BYTES_MAX,
                "page {pages}: Settle too large"
            );
            let LedgerApplied::Settled { watermark: up_to, .. } = ledger_apply(&mut ledger, settle) else {
                panic!("not settled")
            };
            if pages == 0 {
                // An audit between the ledger's Settle and the region's
                // acknowledgement asks for no outbox entries: the region's
                // sum of the settled, unacknowledged units balances the books.
                let audit_request = ReportRequest {
                    outbox_after: None,
                    outbox_max: 0,
                    outbox_bytes_max: 0,
                    transfers: Vec::new(),
                    unacked_up_to: Some(up_to),
                };
                let audit_report = build_report(&region, &context, &audit_request);
                assert!(audit_report.outbox.is_empty() && audit_report.outbox_more);
                let sheet = reservoir_tokens::audit::balance(&ledger, &[&audit_report]);
                assert!(sheet.balanced(), "{sheet:?}");
                let unacked = audit_report.unacked.values().copied().collect::<Vec<_>>();
                assert_eq!(
                    unacked,
                    vec![up_to; skus.len()],
                    "one unit of every SKU per settled cart"
                );
            }
            region_apply(&mut region, RegionOp::Settled { up_to_seq: up_to });
            pages += 1;
            assert!(pages <= carts, "pages never end");
        }
        assert!(pages > 1, "the outbox came in one page");
        eprintln!("{carts} carts of {unpaged_bytes} encoded bytes settled in {pages} pages");
        assert_eq!(ledger.watermark(REGION), carts, "every sale settled");
        assert_eq!(region.settled_up_to(), carts, "every sale acknowledged");
        for sku in &skus {
            assert_eq!(ledger.skus()[sku].settled_total, carts, "{sku}");
            let bucket = region.bucket(sku).expect("a bucket");
            assert_eq!((bucket.confirmed, bucket.settled), (0, carts), "{sku}");
        }
    }
}
