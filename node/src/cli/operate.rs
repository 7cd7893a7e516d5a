//! The operator commands (`membership`, `add-node`, `remove-node`,
//! `replace-node`, `transfer-leader`, `snapshot`, `backup`): Admin calls,
//! on one Raft group or the whole cluster, made with the admin role's key.
//! (`reservoir restore` works offline on a node's data directory:
//! [`crate::server::backup::restore`].)
//!
//! `add-node` and `replace-node` run several calls, each bounded and safe
//! to repeat: add the new node as a learner, wait (at most `--timeout-s`)
//! until its log is within [`CATCH_UP_LAG_MAX`] entries of the leader's,
//! printing its progress on stderr, then change the voters in one joint
//! change. A command stopped half way leaves the new node a learner (it
//! votes on nothing); running it again finishes it. `remove-node` and
//! `replace-node` move leadership off a node they remove first.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use reservoir_client::{ClientChannel, reason_of};
use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
pub use reservoir_raft::admin::CATCH_UP_LAG_MAX;
use tonic::Status;

use super::{ClientError, Target, connect, explained, row, table};

/// How long `add-node` and `replace-node` wait for the new node to catch
/// up, by default.
pub const CATCH_UP_TIMEOUT_S_DEFAULT: u64 = 300;
/// Longest catch-up wait one may ask for.
pub const CATCH_UP_TIMEOUT_S_MAX: u64 = 24 * 3600;
/// How often the progress of a catching-up node is asked for.
pub const PROGRESS_POLL: Duration = Duration::from_millis(500);

/// The group an operator command is for.
#[derive(Clone, Debug, Default, Args)]
pub struct GroupArg {
    /// The Raft group: the region's own (default) or `ledger` (on a node of
    /// the home region).
    #[arg(long, value_name = "GROUP", default_value = "")]
    pub group: String,
}

/// The operator commands.
#[derive(Clone, Debug, Subcommand)]
pub enum OperateCommand {
    /// Print a group's voters and learners, and how far each member's log
    /// has come (Admin.GetMembership, asked of the leader).
    Membership {
        /// The node.
        #[command(flatten)]
        target: Target,
        /// The group.
        #[command(flatten)]
        group: GroupArg,
    },
    /// Add a node to a group: as a learner, then, once it has caught up, as
    /// a voter. Start the node first with `join = true` and an empty
    /// data_dir, under an id the group never had.
    AddNode {
        /// A node of the group.
        #[command(flatten)]
        target: Target,
        /// The group.
        #[command(flatten)]
        group: GroupArg,
        /// The new node's id (never reused).
        #[arg(long, value_name = "ID")]
        id: u64,
        /// Its peer-plane address, host:port, as the group's nodes reach it.
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        /// How long to wait for it to catch up.
        #[arg(long, value_name = "S", default_value_t = CATCH_UP_TIMEOUT_S_DEFAULT)]
        timeout_s: u64,
    },
    /// Remove a node from a group (leadership moves off it first).
    RemoveNode {
        /// A node of the group.
        #[command(flatten)]
        target: Target,
        /// The group.
        #[command(flatten)]
        group: GroupArg,
        /// The node to remove.
        #[arg(long, value_name = "ID")]
        id: u64,
    },
    /// Replace a node (e.g. one whose data is gone) by a new node under a
    /// new id: the new one is added as a learner, catches up (by snapshot),
    /// and one joint change removes the old id and makes the new one a
    /// voter.
    ReplaceNode {
        /// A node of the group.
        #[command(flatten)]
        target: Target,
        /// The group.
        #[command(flatten)]
        group: GroupArg,
        /// The node to replace.
        #[arg(long, value_name = "ID")]
        old: u64,
        /// The new node's id (never one the group had).
        #[arg(long, value_name = "ID")]
        id: u64,
        /// The new node's peer-plane address, host:port.
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
        /// How long to wait for it to catch up.
        #[arg(long, value_name = "S", default_value_t = CATCH_UP_TIMEOUT_S_DEFAULT)]
        timeout_s: u64,
    },
    /// Hand a group's leadership to a voter (Admin.TransferLeader): before
    /// stopping its leader, e.g. in a rolling restart.
    TransferLeader {
        /// A node of the group.
        #[command(flatten)]
        target: Target,
        /// The group.
        #[command(flatten)]
        group: GroupArg,
        /// The voter to lead [default: any other voter].
        #[arg(long, value_name = "ID")]
        to: Option<u64>,
    },
    /// Build a snapshot of a group on the node called and print the log
    /// index it covers (Admin.TriggerSnapshot).
    Snapshot {
        /// The node that builds it.
        #[command(flatten)]
        target: Target,
        /// The group.
        #[command(flatten)]
        group: GroupArg,
    },
    /// Write a consistent backup of the cluster (the ledger and every
    /// region), or of a standalone region, to a new file (Admin.Backup);
    /// `reservoir restore` starts a fresh cluster from it.
    Backup {
        /// Any node (with a ledger: any node of any region).
        #[command(flatten)]
        target: Target,
        /// The file to write; it must not exist.
        #[arg(long, value_name = "FILE")]
        out: std::path::PathBuf,
    },
}

impl OperateCommand {
    fn target(&self) -> &Target {
        match self {
            OperateCommand::Membership { target, .. }
            | OperateCommand::AddNode { target, .. }
            | OperateCommand::RemoveNode { target, .. }
            | OperateCommand::ReplaceNode { target, .. }
            | OperateCommand::TransferLeader { target, .. }
            | OperateCommand::Snapshot { target, .. }
            | OperateCommand::Backup { target, .. } => target,
        }
    }
}

/// Tries of an operator command answered with a retryable error.
pub const COMMAND_TRIES: u32 = 10;
/// Pause between those tries.
pub const COMMAND_RETRY_PAUSE: Duration = Duration::from_millis(300);

/// Tries of `transfer-leader` that meet a passing obstacle.
pub const TRANSFER_TRIES: u32 = 5;
/// Pause between those tries.
pub const TRANSFER_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// True when leadership has moved as a transfer from `from` asked: a
/// leader other than `from`, and the one asked for, if any.
fn moved(from: u64, now: u64, to: Option<u64>) -> bool {
    now != 0 && now != from && to.is_none_or(|to| to == now)
}

/// True for a `TransferLeader` failure that asking again may mend: a
/// transfer beaten by another election, or by a target that was not
/// caught up in time (with the API's retryable answers, which every
/// operator command asks again, in [`run`]).
fn transfer_again(status: &Status) -> bool {
    matches!(
        reason_of(status).as_deref(),
        Some("TRANSFERRED_ELSEWHERE" | "TRANSFER_REFUSED" | "NOT_CAUGHT_UP" | "ADMIN_TIMEOUT")
    )
}

/// Runs one operator command; returns the text to print on success.
pub async fn run(command: OperateCommand) -> Result<String, ClientError> {
    let connection = command
        .target()
        .resolve("admin", |name| std::env::var(name).ok())?;
    let channel = connect(&connection).await?;
    let tls = connection.credentials.is_tls();
    // Every operator command finds its work done when asked again, so one
    // that meets an election (NO_LEADER) or a busy node is asked again, a
    // few times, as the API's retry rule says.
    let mut tries = 0;
    loop {
        tries += 1;
        let asked = call(command.clone(), channel.clone()).await;
        // A removal that was asked again (its first answer lost) and finds
        // the node gone was done by the first ask.
        if let (OperateCommand::RemoveNode { id, .. }, Err(ClientError::Status(status))) = (&command, &asked)
            && tries > 1
            && reason_of(status).as_deref() == Some("UNKNOWN_NODE")
        {
            return Ok(format!("node {id} removed (found so when asked again)"));
        }
        match asked {
            Err(ClientError::Status(status))
                if tries < COMMAND_TRIES && reservoir_client::is_retryable(&status) =>
            {
                eprintln!(
                    "{}: {}; asking again",
                    reason_of(&status).unwrap_or_else(|| format!("{:?}", status.code())),
                    status.message()
                );
                tokio::time::sleep(COMMAND_RETRY_PAUSE).await;
            }
            done => {
                return done.map_err(|e| match e {
                    ClientError::Status(status) => ClientError::Status(explained(status, tls)),
                    other => other,
                });
            }
        }
    }
}

async fn call(command: OperateCommand, channel: ClientChannel) -> Result<String, ClientError> {
    let mut admin = AdminClient::new(channel);
    match command {
        OperateCommand::Membership { group, .. } => {
            let view = membership(&mut admin, &group.group).await?;
            Ok(format_membership(&view))
        }
        OperateCommand::AddNode {
            group,
            id,
            address,
            timeout_s,
            ..
        } => {
            let view = join(&mut admin, &group.group, id, &address, timeout_s, None).await?;
            Ok(format!(
                "node {id} is a voter of {}\n{}",
                view.group,
                format_membership(&view)
            ))
        }
        OperateCommand::RemoveNode { group, id, .. } => {
            let group = group.group;
            move_leadership_off(&mut admin, &group, id).await?;
            let view = admin
                .change_voters(v1::ChangeVotersRequest {
                    group,
                    add: Vec::new(),
                    remove: vec![id],
                })
                .await?
                .into_inner();
            Ok(format!(
                "node {id} removed from {}\n{}",
                view.group,
                format_membership(&view)
            ))
        }
        OperateCommand::ReplaceNode {
            group,
            old,
            id,
            address,
            timeout_s,
            ..
        } => {
            if old == id {
                return Err(ClientError::Setup(
                    "--id must be a new node id: a node id is never reused".into(),
                ));
            }
            let view = membership(&mut admin, &group.group).await?;
            let has = |id: u64| view.members.iter().any(|m| m.id == id);
            let voter = |id: u64| view.members.iter().any(|m| m.id == id && m.role == "voter");
            if !has(old) {
                if voter(id) {
                    return Ok(format!(
                        "node {old} was already replaced by node {id}\n{}",
                        format_membership(&view)
                    ));
                }
                return Err(ClientError::Setup(format!(
                    "node {old} is not a member of {}: nothing to replace (see `reservoir membership`)",
                    view.group
                )));
            }
            let view = join(&mut admin, &group.group, id, &address, timeout_s, Some(old)).await?;
            Ok(format!(
                "node {old} replaced by node {id} in {}\n{}",
                view.group,
                format_membership(&view)
            ))
        }
        OperateCommand::TransferLeader { group, to, .. } => {
            // A transfer can meet an election it did not start (a third
            // node's timer fired: TRANSFERRED_ELSEWHERE), a target that
            // could not catch up in its second (NOT_CAUGHT_UP), a leader
            // that just changed (NO_LEADER), or lose its answer: each is
            // worth asking again, a few times, but only after checking
            // that leadership has not already moved off the leader this
            // command started from (asking again then would move it on,
            // maybe back).
            let from = membership(&mut admin, &group.group).await?.leader_id;
            let mut tries = 0;
            let (name, leader_id) = loop {
                tries += 1;
                let asked = admin
                    .transfer_leader(v1::TransferLeaderRequest {
                        group: group.group.clone(),
                        to: to.unwrap_or(0),
                    })
                    .await;
                let status = match asked {
                    Ok(answer) => {
                        let answer = answer.into_inner();
                        break (answer.group, answer.leader_id);
                    }
                    Err(status)
                        if tries < TRANSFER_TRIES
                            && (transfer_again(&status) || reservoir_client::is_retryable(&status)) =>
                    {
                        status
                    }
                    Err(status) => return Err(status.into()),
                };
                eprintln!(
                    "transfer-leader: {}: {}",
                    reason_of(&status).unwrap_or_else(|| format!("{:?}", status.code())),
                    status.message()
                );
                tokio::time::sleep(TRANSFER_RETRY_PAUSE).await;
                if let Ok(now) = membership(&mut admin, &group.group).await
                    && moved(from, now.leader_id, to)
                {
                    break (now.group, now.leader_id);
                }
                eprintln!("transfer-leader: asking again");
            };
            Ok(format!("{name}: node {leader_id} leads"))
        }
        OperateCommand::Backup { out, .. } => {
            use crate::server::backup::{BACKUP_BYTES_MAX, decode, describe};
            if out.exists() {
                return Err(ClientError::Setup(format!(
                    "{} exists; give a new file",
                    out.display()
                )));
            }
            let mut stream = admin.backup(v1::BackupRequest {}).await?.into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await? {
                if bytes.len() + chunk.data.len() > BACKUP_BYTES_MAX {
                    return Err(ClientError::Malformed("a backup over its size bound"));
                }
                bytes.extend_from_slice(&chunk.data);
            }
            let (header, _) =
                decode(&bytes).map_err(|e| ClientError::Setup(format!("the backup received: {e}")))?;
            write_new(&out, &bytes)
                .map_err(|e| ClientError::Setup(format!("writing {}: {e}", out.display())))?;
            Ok(format!(
                "{} bytes written to {}\n{}",
                bytes.len(),
                out.display(),
                describe(&header)
            ))
        }
        OperateCommand::Snapshot { group, .. } => {
            let answer = admin
                .trigger_snapshot(v1::TriggerSnapshotRequest { group: group.group })
                .await?
                .into_inner();
            Ok(format!(
                "{}: node {} built a snapshot covering log index {}",
                answer.group, answer.node_id, answer.snapshot_index
            ))
        }
    }
}

async fn membership(admin: &mut AdminClient<ClientChannel>, group: &str) -> Result<v1::Membership, Status> {
    admin
        .get_membership(v1::GetMembershipRequest {
            group: group.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Moves leadership off `id` if it leads `group`.
async fn move_leadership_off(
    admin: &mut AdminClient<ClientChannel>,
    group: &str,
    id: u64,
) -> Result<(), ClientError> {
    let view = membership(admin, group).await?;
    if view.leader_id != id {
        return Ok(());
    }
    let answer = admin
        .transfer_leader(v1::TransferLeaderRequest {
            group: group.to_string(),
            to: 0,
        })
        .await?
        .into_inner();
    eprintln!(
        "{}: leadership moved from node {id} to node {}",
        answer.group, answer.leader_id
    );
    Ok(())
}

/// Adds node `id` at `address` as a learner, waits for it to catch up
/// (printing its progress), then makes it a voter, removing `replacing` in
/// the same joint change.
async fn join(
    admin: &mut AdminClient<ClientChannel>,
    group: &str,
    id: u64,
    address: &str,
    timeout_s: u64,
    replacing: Option<u64>,
) -> Result<v1::Membership, ClientError> {
    if timeout_s == 0 || timeout_s > CATCH_UP_TIMEOUT_S_MAX {
        return Err(ClientError::Setup(format!(
            "--timeout-s must be 1-{CATCH_UP_TIMEOUT_S_MAX}"
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let view = admin
        .add_learner(v1::AddLearnerRequest {
            group: group.to_string(),
            node_id: id,
            address: address.to_string(),
        })
        .await?
        .into_inner();
    eprintln!("{}: node {id} is a member ({})", view.group, role_of(&view, id));
    let mut shown = None;
    loop {
        let view = membership(admin, group).await?;
        let last = view.last_log_index;
        let member = view.members.iter().find(|m| m.id == id);
        let matched = member.filter(|m| m.has_matched_index).map(|m| m.matched_index);
        let voter = member.is_some_and(|m| m.role == "voter");
        let replaced = replacing.is_none_or(|old| view.members.iter().all(|m| m.id != old));
        if voter && replaced {
            return Ok(view);
        }
        let lag = matched.map(|m| last.saturating_sub(m));
        if shown != Some((matched, last)) {
            shown = Some((matched, last));
            match matched {
                Some(m) => eprintln!(
                    "{}: node {id} holds the log up to {m} of {last} (lag {})",
                    view.group,
                    last - m.min(last)
                ),
                None => eprintln!(
                    "{}: node {id} has nothing yet (the leader's log ends at {last})",
                    view.group
                ),
            }
        }
        if lag.is_some_and(|lag| lag <= CATCH_UP_LAG_MAX) {
            if let Some(old) = replacing {
                move_leadership_off(admin, group, old).await?;
            }
            let change = admin
                .change_voters(v1::ChangeVotersRequest {
                    group: group.to_string(),
                    add: vec![id],
                    remove: replacing.into_iter().collect(),
                })
                .await;
            match change {
                Ok(answer) => return Ok(answer.into_inner()),
                // It fell behind again (or another change ran): wait more.
                Err(status)
                    if matches!(
                        reason_of(&status).as_deref(),
                        Some("NOT_CAUGHT_UP" | "MEMBERSHIP_CHANGING")
                    ) => {}
                Err(status) => return Err(status.into()),
            }
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Setup(format!(
                "node {id} did not catch up within {timeout_s} s; it stays a learner (it votes on \
                 nothing): run the command again to finish, or `reservoir remove-node --id {id}`"
            )));
        }
        tokio::time::sleep(PROGRESS_POLL).await;
    }
}

/// Writes `bytes` to a new file `path` and syncs it.
fn write_new(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn role_of(view: &v1::Membership, id: u64) -> &str {
    view.members
        .iter()
        .find(|m| m.id == id)
        .map_or("not a member", |m| m.role.as_str())
}

/// A membership as a table: each member, its role, address and progress.
pub fn format_membership(view: &v1::Membership) -> String {
    let leader = if view.leader_id == 0 {
        "none".to_string()
    } else {
        view.leader_id.to_string()
    };
    let mut out = format!(
        "group {}: leader {leader}, term {}, last log index {}{}\n",
        view.group,
        view.term,
        view.last_log_index,
        if view.joint {
            " (a membership change is half done)"
        } else {
            ""
        }
    );
    let mut rows = vec![row(&["ID", "ROLE", "ADDRESS", "MATCHED", "LAG"])];
    for m in &view.members {
        let role = if m.id == view.leader_id {
            "voter (leader)"
        } else {
            m.role.as_str()
        };
        let (matched, lag) = if m.has_matched_index {
            (
                m.matched_index.to_string(),
                view.last_log_index.saturating_sub(m.matched_index).to_string(),
            )
        } else {
            ("-".to_string(), "-".to_string())
        };
        rows.push(vec![
            m.id.to_string(),
            role.to_string(),
            m.address.clone(),
            matched,
            lag,
        ]);
    }
    out += &table(&rows);
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer has happened when a leader other than the one it started
    /// from leads, and the one asked for, if any.
    #[test]
    fn a_transfer_has_moved_only_off_its_leader_and_to_its_target() {
        assert!(moved(1, 2, None));
        assert!(moved(1, 2, Some(2)));
        assert!(!moved(1, 3, Some(2)));
        assert!(!moved(1, 1, None));
        assert!(!moved(1, 0, None));
    }
}
