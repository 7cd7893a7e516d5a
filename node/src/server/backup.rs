//! Backups: one file holding the state of every group of a cluster at one
//! consistent cut (or of a standalone region), and the restore that seeds
//! a fresh node's empty data directory from it.
//!
//! The file:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `RSVBACK1` |
//! | 4 | format version (1), little-endian |
//! | 4 | length of the header, little-endian |
//! | … | the [`BackupHeader`], JSON (format version, cluster kind, each group's name, kind, applied index, size and CRC-32) |
//! | … | each group's state, bincode, in the header's order |
//! | 4 | CRC-32 of every byte before it, little-endian |
//!
//! Why the cut is consistent (docs/architecture.md, "Backups"): a
//! standalone region is one group, read once, linearizably. A cluster's
//! backup is taken by the ledger leader holding the lock its rounds and
//! audits take, so no transfer or settlement of its own is half done: it
//! reads the ledger linearizably, then each region linearizably. Between
//! the two reads only region-local commands (reserve, confirm, release,
//! expire) and ledger stock adjustments can commit, which move no token
//! between the ledger and a region. A transfer the ledger records in
//! flight is found applied or not in the region's state (its applied
//! transfer ids), and a restored ledger leader finishes it as after a
//! crash; a region never drops outbox entries past the ledger's watermark,
//! so every unsettled sale is either in the ledger or in the region's
//! outbox, and settlement, idempotent by sequence number, resumes. The
//! leader confirms its leadership (same term, a quorum) after reading the
//! regions, so no other ledger leader ran a round in between.
//!
//! Restore (`reservoir restore --backup FILE --config node.toml`, before
//! the node's first start, on every node of the group): the group's state
//! becomes a snapshot in the node's empty data directory, with the voters
//! of the node's config as its membership ([`reservoir_raft::NodeStorage::seed_group`]).

use std::collections::BTreeMap;
use std::path::Path;

use reservoir_raft::{NodeStorage, StorageOptions};
use reservoir_tokens::{LedgerState, RegionState};
use serde::{Deserialize, Serialize};

use crate::server::LEDGER_GROUP;
use crate::server::config::NodeConfig;

/// First bytes of every backup file.
pub const MAGIC: &[u8; 8] = b"RSVBACK1";
/// The file format written and read.
pub const FORMAT_VERSION: u32 = 1;
/// Largest backup file made or read (it is held in memory whole).
pub const BACKUP_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Largest header.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;
/// Most groups in one backup (the ledger and its regions).
pub const BACKUP_GROUPS_MAX: usize = 16;
/// Size of the pieces a backup is streamed in.
pub const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;
/// `cluster` of a standalone region's backup.
pub const STANDALONE: &str = "standalone";
/// `cluster` of a cluster's backup (the ledger and every region).
pub const CLUSTER: &str = "tokens";

/// What a group holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// A region group (`RegionState`).
    Region,
    /// The ledger group (`LedgerState`).
    Ledger,
}

/// One group in a backup's header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHeader {
    /// The group's name (a region, or `ledger`).
    pub name: String,
    /// What it holds.
    pub kind: GroupKind,
    /// The log index its state was applied up to when read.
    pub applied_index: u64,
    /// The size of its encoded state.
    pub bytes: u64,
    /// The CRC-32 of its encoded state.
    pub crc32: u32,
}

/// A backup's header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// When it was taken (the taker's wall clock, ms since the epoch).
    pub created_at_ms: u64,
    /// [`STANDALONE`] or [`CLUSTER`].
    pub cluster: String,
    /// Its groups, in the order their states follow.
    pub groups: Vec<GroupHeader>,
}

/// One group's state, encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    /// The group's name.
    pub name: String,
    /// What it holds.
    pub kind: GroupKind,
    /// The log index its state was applied up to.
    pub applied_index: u64,
    /// The state, bincode.
    pub state: Vec<u8>,
}

/// Most encoded bytes of one region's state in a cluster backup, and of the
/// whole cluster backup: they travel in one control-plane message each.
pub const CLUSTER_BACKUP_BYTES_MAX: usize =
    crate::server::control::CONTROL_MESSAGE_BYTES_MAX - crate::server::control::REPORT_MARGIN_BYTES;

/// A backup that could not be taken: `BACKUP_TOO_LARGE`
/// (`RESOURCE_EXHAUSTED`: over its bound, nothing will change that) or
/// `BACKUP_FAILED` (`UNAVAILABLE`: a group could not be read; try again).
pub fn backup_error(too_large: bool, message: String) -> tonic::Status {
    let (code, reason) = if too_large {
        (tonic::Code::ResourceExhausted, "BACKUP_TOO_LARGE")
    } else {
        (tonic::Code::Unavailable, "BACKUP_FAILED")
    };
    crate::server::status::status_with_info(code, message, reason, vec![])
}

/// Encodes a group's state.
pub fn encode_state<T: Serialize>(state: &T) -> Result<Vec<u8>, String> {
    let bytes = bincode::serialize(state).map_err(|e| format!("encoding a state: {e}"))?;
    if bytes.len() > BACKUP_BYTES_MAX {
        return Err(format!(
            "a state of {} bytes is over {BACKUP_BYTES_MAX}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// The backup file of `groups`.
pub fn encode(cluster: &str, created_at_ms: u64, groups: &[GroupState]) -> Result<Vec<u8>, String> {
    if groups.is_empty() || groups.len() > BACKUP_GROUPS_MAX {
        return Err(format!("a backup holds 1-{BACKUP_GROUPS_MAX} groups"));
    }
    let header = BackupHeader {
        format_version: FORMAT_VERSION,
        created_at_ms,
        cluster: cluster.to_string(),
        groups: groups
            .iter()
            .map(|g| GroupHeader {
                name: g.name.clone(),
                kind: g.kind,
                applied_index: g.applied_index,
                bytes: g.state.len() as u64,
                crc32: crc32fast::hash(&g.state),
            })
            .collect(),
    };
    let header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let total = 20 + header.len() + groups.iter().map(|g| g.state.len()).sum::<usize>();
    if total > BACKUP_BYTES_MAX {
        return Err(format!("a backup of {total} bytes is over {BACKUP_BYTES_MAX}"));
    }
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for g in groups {
        out.extend_from_slice(&g.state);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Reads a backup file, checking its magic, version, sizes and checksums.
pub fn decode(bytes: &[u8]) -> Result<(BackupHeader, Vec<GroupState>), String> {
    if bytes.len() > BACKUP_BYTES_MAX {
        return Err(format!(
            "{} bytes, over the {BACKUP_BYTES_MAX} a backup may have",
            bytes.len()
        ));
    }
    if bytes.len() < 20 || &bytes[..8] != MAGIC {
        return Err("not a Reservoir backup (no RSVBACK1 magic)".into());
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "truncated")?);
    if crc32fast::hash(body) != crc {
        return Err("the file's checksum does not match: it is damaged or truncated".into());
    }
    let version = u32::from_le_bytes(body[8..12].try_into().map_err(|_| "truncated")?);
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version}; this build reads {FORMAT_VERSION}"
        ));
    }
    let header_len = u32::from_le_bytes(body[12..16].try_into().map_err(|_| "truncated")?) as usize;
    if header_len > HEADER_BYTES_MAX || 16 + header_len > body.len() {
        return Err(format!("a header of {header_len} bytes does not fit"));
    }
    let header: BackupHeader =
        serde_json::from_slice(&body[16..16 + header_len]).map_err(|e| format!("header: {e}"))?;
    if header.groups.len() > BACKUP_GROUPS_MAX {
        return Err(format!(
            "{} groups, over {BACKUP_GROUPS_MAX}",
            header.groups.len()
        ));
    }
    let mut at = 16 + header_len;
    let mut groups = Vec::with_capacity(header.groups.len());
    for g in &header.groups {
        let end = at
            .checked_add(g.bytes as usize)
            .filter(|end| *end <= body.len())
            .ok_or_else(|| format!("group {}: {} bytes do not fit", g.name, g.bytes))?;
        let state = body[at..end].to_vec();
        if crc32fast::hash(&state) != g.crc32 {
            return Err(format!("group {}: checksum mismatch", g.name));
        }
        groups.push(GroupState {
            name: g.name.clone(),
            kind: g.kind,
            applied_index: g.applied_index,
            state,
        });
        at = end;
    }
    if at != body.len() {
        return Err(format!("{} bytes after the last group", body.len() - at));
    }
    Ok((header, groups))
}

/// Reads a backup file, refusing one over [`BACKUP_BYTES_MAX`] before
/// reading it.
pub fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let bytes = std::fs::metadata(path)?.len();
    if bytes > BACKUP_BYTES_MAX as u64 {
        return Err(std::io::Error::other(format!(
            "{bytes} bytes, over the {BACKUP_BYTES_MAX} a backup may have"
        )));
    }
    std::fs::read(path)
}

/// One line per group: what a backup holds.
pub fn describe(header: &BackupHeader) -> String {
    let mut out = format!(
        "backup format {}, {} cluster, taken at {} ms",
        header.format_version, header.cluster, header.created_at_ms
    );
    for g in &header.groups {
        out += &format!(
            "\n  group {} ({:?}): applied index {}, {} bytes, crc32 {:08x}",
            g.name, g.kind, g.applied_index, g.bytes, g.crc32
        );
    }
    out
}

/// Seeds the groups `config`'s node hosts (its region group and, on a
/// ledger host, the ledger) from the backup `bytes`, into its data
/// directory, which must hold no data of them. Refused: a backup of another
/// kind (standalone vs cluster) or without the node's groups. Blocking.
pub fn restore(config: &NodeConfig, bytes: &[u8]) -> Result<String, String> {
    let (header, groups) = decode(bytes)?;
    let want = if config.standalone { STANDALONE } else { CLUSTER };
    if header.cluster != want {
        return Err(format!(
            "a {} backup cannot restore a {} node (its config says standalone = {})",
            header.cluster, want, config.standalone
        ));
    }
    let find = |name: &str, kind: GroupKind| {
        groups
            .iter()
            .find(|g| g.name == name && g.kind == kind)
            .ok_or_else(|| format!("the backup holds no {kind:?} group {name}"))
    };
    let region = find(&config.region, GroupKind::Region)?;
    let ledger = if config.hosts_ledger() {
        Some(find(LEDGER_GROUP, GroupKind::Ledger)?)
    } else {
        None
    };
    let region_state: RegionState =
        bincode::deserialize(&region.state).map_err(|e| format!("group {}: {e}", region.name))?;
    if region_state.region() != config.region {
        return Err(format!(
            "group {} holds region {}'s state",
            region.name,
            region_state.region()
        ));
    }
    let ledger_state: Option<LedgerState> = ledger
        .map(|g| bincode::deserialize(&g.state).map_err(|e| format!("group {}: {e}", g.name)))
        .transpose()?;
    let voters = |peers: &[crate::server::config::Peer]| -> BTreeMap<u64, String> {
        peers.iter().map(|p| (p.id, p.peer.to_string())).collect()
    };
    if !is_empty_dir(&config.data_dir)? {
        return Err(format!(
            "data_dir {} is not empty: a restore goes into a node's empty data directory, before its first start",
            config.data_dir.display()
        ));
    }
    let storage = NodeStorage::open(&StorageOptions::new(config.data_dir.clone()))
        .map_err(|e| format!("opening {}: {e}", config.data_dir.display()))?;
    let mut out = format!("node {}: restored from {}", config.node_id, describe(&header));
    let at = storage
        .seed_group(
            &config.region,
            region_state,
            region.applied_index,
            &voters(&config.peers),
        )
        .map_err(|e| e.to_string())?;
    out += &format!("\n  {} seeded at index {}", config.region, at.index);
    if let (Some(state), Some(g)) = (ledger_state, ledger) {
        let at = storage
            .seed_group(
                LEDGER_GROUP,
                state,
                g.applied_index,
                &voters(&config.ledger_peers),
            )
            .map_err(|e| e.to_string())?;
        out += &format!("\n  {LEDGER_GROUP} seeded at index {}", at.index);
    }
    Ok(out)
}

fn is_empty_dir(dir: &Path) -> Result<bool, String> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Vec<GroupState> {
        vec![
            GroupState {
                name: "ledger".into(),
                kind: GroupKind::Ledger,
                applied_index: 7,
                state: encode_state(&LedgerState::new()).unwrap(),
            },
            GroupState {
                name: "us-east".into(),
                kind: GroupKind::Region,
                applied_index: 9,
                state: encode_state(&RegionState::new("us-east")).unwrap(),
            },
        ]
    }

    /// A backup reads back as written; a flipped byte anywhere, a
    /// truncation or another magic is refused.
    #[test]
    fn backups_round_trip_and_damage_is_refused() {
        let bytes = encode(CLUSTER, 1, &groups()).unwrap();
        let (header, read) = decode(&bytes).unwrap();
        assert_eq!(read, groups());
        assert_eq!(header.cluster, CLUSTER);
        assert_eq!(header.groups[1].applied_index, 9);
        for at in [0, 10, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut damaged = bytes.clone();
            damaged[at] ^= 1;
            assert!(decode(&damaged).is_err(), "a flipped byte at {at}");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(b"not a backup at all").is_err());
    }
}
