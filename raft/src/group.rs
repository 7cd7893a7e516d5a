//! One Raft group on one node: openraft wired to the sled stores and the
//! network, a proposer that group-commits client commands, and reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::config::{Batch, GroupConfig, GroupMachine, GroupRaft, Node, NodeId};
use crate::network::{Network, RaftEndpoint, Router, SNAPSHOT_CHUNK_BYTES_DEFAULT, Wire};
use crate::store::{GroupStores, SnapshotStatsHandle, StateReader};

/// Default bound of proposals waiting for a batch; past it a caller gets
/// [`ProposeError::Overloaded`] at once.
pub const PROPOSAL_QUEUE_MAX: usize = 4_096;
/// Most commands in one log entry.
pub const BATCH_COMMANDS_MAX: usize = 512;
/// Most estimated encoded bytes of commands in one log entry (well under
/// [`crate::ENTRY_BYTES_MAX`]).
pub const BATCH_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Most batches being written at once, by default. More than one lets
/// openraft and the log store's group-committed flush merge batches; bounded
/// so the queue, not the Raft core, absorbs a burst. (Inside a region 16 made
/// batches smaller and cost CPU; see README. Over a WAN, 32 cut latency a
/// little but made more entries than openraft 0.9 carries to a far
/// follower; see BENCHMARKS.md.)
pub const BATCHES_IN_FLIGHT_MAX: usize = 4;
/// Most log entries in one replication message.
pub const REPLICATION_ENTRIES_MAX: u64 = 32;
/// How long a proposal, a batch's write and a linearizable read may take by
/// default before they give up with [`ProposeError::Timeout`].
pub const PROPOSE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Tries of a linearizable read's leadership check that found too few
/// replies in time (see `Group::read_index`).
pub const READ_QUORUM_TRIES: u32 = 20;
/// Pause between those tries.
pub const READ_QUORUM_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Why a proposal or a linearizable read did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader. `leader` is the leader's id and address,
    /// when known. The command may still commit if this node was the leader
    /// when it was queued: commands must be idempotent to be retried.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known: (node id, gRPC address).
        leader: Option<(NodeId, String)>,
    },
    /// The proposal queue is full. Nothing was proposed; retry later.
    #[error("proposal queue full")]
    Overloaded,
    /// The leader could not reach a quorum to confirm its leadership.
    #[error("no quorum: {0}")]
    NoQuorum(String),
    /// The group has stopped (shutdown or a fatal storage error).
    #[error("raft group stopped: {0}")]
    Stopped(String),
    /// No outcome within the group's bound ([`GroupOptions::propose_timeout_ms`]):
    /// the command may or may not commit. openraft 0.9 answers a write only
    /// when its entry is applied or truncated here, and a node brought up to
    /// date by a snapshot does neither (see [`Group::propose`]). Retry with
    /// the same request id.
    #[error("no outcome within {waited_ms} ms: the command may or may not commit")]
    Timeout {
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// Commands proposed together ([`Group::propose_many`]) exceed one log
    /// entry's bounds. Nothing was proposed; the same set will never fit.
    #[error("too large for one log entry: {0}")]
    TooLarge(String),
}

impl ProposeError {
    /// True when the same idempotent command may be proposed again: every
    /// error but [`ProposeError::TooLarge`].
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ProposeError::TooLarge(_))
    }
}

/// How to run one group on one node.
#[derive(Clone, Debug)]
pub struct GroupOptions {
    /// The group id, e.g. `region/us-east`; also the openraft cluster name.
    pub group: String,
    /// This node.
    pub node_id: NodeId,
    /// The voters (id → gRPC address) the group is initialized with, on its
    /// very first start, by the member with the smallest id (unless it
    /// [`joins`](GroupOptions::join)). The addresses
    /// are this node's view: it sends to and forwards to a peer at the
    /// address given here, whatever address the initializer stored in the
    /// membership (nodes behind a link emulator reach each other by
    /// different addresses).
    pub members: BTreeMap<NodeId, String>,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Shortest election timeout.
    pub election_timeout_min_ms: u64,
    /// Longest election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot every this many log entries (default
    /// [`SNAPSHOT_LOGS_DEFAULT`]); each voter at its own offset (see
    /// [`snapshot_offset`]), so a group's nodes never build at once.
    pub snapshot_logs: u64,
    /// Log entries kept behind the newest snapshot, so that a briefly
    /// lagging follower catches up from the log rather than a whole
    /// snapshot; older entries are purged.
    pub snapshot_logs_to_keep: u64,
    /// Most proposals waiting for a batch; past it callers get `Overloaded`.
    pub proposal_queue_max: usize,
    /// Most batches being written at once (default
    /// [`BATCHES_IN_FLIGHT_MAX`]). A batch is in flight until it commits.
    pub batches_in_flight: usize,
    /// Size of the chunks this node sends snapshots in (default
    /// [`SNAPSHOT_CHUNK_BYTES_DEFAULT`], at most
    /// [`crate::network::SNAPSHOT_CHUNK_BYTES_MAX`]).
    pub snapshot_chunk_bytes: usize,
    /// The bound of every wait on consensus (default
    /// [`PROPOSE_TIMEOUT_MS_DEFAULT`]): a [`Group::propose`] call, a
    /// batch's write (its slot is free again when it fires), and a
    /// [`Group::read_linearizable`].
    pub propose_timeout_ms: u64,
    /// This node joins a running group: it never initializes the group,
    /// even with an empty log and the smallest id of `members`, and waits
    /// for the group's leader to add it (see [`crate::admin`]).
    pub join: bool,
}

/// Log entries between a node's snapshots. Building one no longer holds up
/// applying (the state clones in O(1) and is written out by a thread of its
/// own; see `store::state_machine`), so this bounds what a restart
/// replays and how much log a node keeps, not latency.
pub const SNAPSHOT_LOGS_DEFAULT: u64 = 100_000;
/// Log entries kept behind a snapshot, by default.
pub const SNAPSHOT_LOGS_KEPT_DEFAULT: u64 = 1_000;
/// How often a group checks whether its next snapshot is due.
pub const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How long a leader waits for a follower to take one snapshot chunk
/// (the last one includes decoding and installing the whole snapshot).
pub const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 30_000;

impl GroupOptions {
    /// Options with default timing and snapshot policy.
    pub fn new(group: impl Into<String>, node_id: NodeId, members: BTreeMap<NodeId, String>) -> GroupOptions {
        GroupOptions {
            group: group.into(),
            node_id,
            members,
            heartbeat_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_logs: SNAPSHOT_LOGS_DEFAULT,
            snapshot_logs_to_keep: SNAPSHOT_LOGS_KEPT_DEFAULT,
            proposal_queue_max: PROPOSAL_QUEUE_MAX,
            batches_in_flight: BATCHES_IN_FLIGHT_MAX,
            snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES_DEFAULT,
            propose_timeout_ms: PROPOSE_TIMEOUT_MS_DEFAULT,
            join: false,
        }
    }
}

/// Why a group could not start.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The openraft configuration was refused.
    #[error("raft config for {group}: {message}")]
    Config {
        /// The group.
        group: String,
        /// openraft's message.
        message: String,
    },
    /// openraft failed to start or to initialize the group.
    #[error("raft group {group}: {message}")]
    Raft {
        /// The group.
        group: String,
        /// What failed.
        message: String,
    },
}

/// A node's role in a group, and where a group stands as seen from this
/// node: the client crate's `/status` schema, which a node shows as is.
pub use reservoir_client::{GroupView as GroupStatus, Role};

/// A caller's command, or its commands that must share one log entry,
/// with where its outcome goes.
enum Proposal<SM: GroupMachine> {
    One {
        command: SM::Command,
        reply: oneshot::Sender<Result<SM::Outcome, ProposeError>>,
    },
    Many {
        commands: Vec<SM::Command>,
        /// Their estimated encoded bytes (computed once, by `propose_many`).
        bytes: u64,
        reply: oneshot::Sender<Result<Vec<SM::Outcome>, ProposeError>>,
    },
}

impl<SM: GroupMachine> Proposal<SM> {
    /// Its caller has given up waiting.
    fn abandoned(&self) -> bool {
        match self {
            Proposal::One { reply, .. } => reply.is_closed(),
            Proposal::Many { reply, .. } => reply.is_closed(),
        }
    }

    /// How many commands it adds to a batch.
    fn len(&self) -> usize {
        match self {
            Proposal::One { .. } => 1,
            Proposal::Many { commands, .. } => commands.len(),
        }
    }

    /// The estimated encoded bytes of its commands.
    fn bytes(&self) -> u64 {
        match self {
            Proposal::One { command, .. } => estimate(command),
            Proposal::Many { bytes, .. } => *bytes,
        }
    }

    /// Moves its commands into `commands`, leaving where its outcome goes.
    fn split(self, commands: &mut Vec<SM::Command>) -> Reply<SM> {
        match self {
            Proposal::One { command, reply } => {
                commands.push(command);
                Reply::One(reply)
            }
            Proposal::Many {
                commands: many,
                reply,
                ..
            } => {
                let n = many.len();
                commands.extend(many);
                Reply::Many(n, reply)
            }
        }
    }
}

/// Where the outcomes of a proposal's commands go once its batch is written.
enum Reply<SM: GroupMachine> {
    One(oneshot::Sender<Result<SM::Outcome, ProposeError>>),
    Many(usize, oneshot::Sender<Result<Vec<SM::Outcome>, ProposeError>>),
}

impl<SM: GroupMachine> Reply<SM> {
    /// Answers with the next outcomes of `outcomes`, one per command.
    fn send(self, outcomes: &mut impl Iterator<Item = SM::Outcome>) {
        match self {
            Reply::One(reply) => {
                let answer = outcomes
                    .next()
                    .ok_or_else(|| ProposeError::Stopped("the batch returned too few outcomes".into()));
                let _ = reply.send(answer);
            }
            Reply::Many(n, reply) => {
                let mine: Vec<SM::Outcome> = outcomes.take(n).collect();
                let answer = if mine.len() == n {
                    Ok(mine)
                } else {
                    Err(ProposeError::Stopped(
                        "the batch returned too few outcomes".into(),
                    ))
                };
                let _ = reply.send(answer);
            }
        }
    }

    /// Answers with `error`.
    fn fail(self, error: ProposeError) {
        match self {
            Reply::One(reply) => {
                let _ = reply.send(Err(error));
            }
            Reply::Many(_, reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

/// One Raft group on one node.
pub struct Group<SM: GroupMachine> {
    pub(crate) name: String,
    pub(crate) node_id: NodeId,
    pub(crate) raft: GroupRaft<SM>,
    reader: StateReader<SM>,
    proposals_tx: mpsc::Sender<Proposal<SM>>,
    queue_max: usize,
    router: Router,
    /// How this node reaches its peers (see [`GroupOptions::members`]).
    pub(crate) addresses: Arc<BTreeMap<NodeId, String>>,
    /// The wire this group's messages travel on (the leader's
    /// `TimeoutNow` to a transfer's target, see [`crate::admin`]).
    pub(crate) wire: Arc<dyn Wire>,
    /// The proposer's write slots; holding all of them pauses new batches
    /// (a leadership transfer, see [`crate::admin`]).
    pub(crate) write_slots: Arc<Semaphore>,
    /// How many write slots there are.
    pub(crate) slots: usize,
    /// The longest election timeout of the group's config (a leader's lease
    /// on every voter is at most this long).
    pub(crate) election_timeout_max_ms: u64,
    pub(crate) snapshot_stats: SnapshotStatsHandle,
    /// The last log index this node had when it started: entries up to it
    /// may have been acknowledged before a crash, so a linearizable read
    /// waits until they are committed (see [`Group::read_linearizable`]).
    log_end_at_start: Option<u64>,
    /// A linearizable read has been served past `log_end_at_start`; later
    /// ones need not check it (a log truncated below it could otherwise
    /// make every read commit an empty batch).
    start_covered: std::sync::atomic::AtomicBool,
    /// See [`GroupOptions::propose_timeout_ms`].
    propose_timeout: Duration,
    /// What the proposer has seen of its commits lately.
    health: Health,
}

impl<SM: GroupMachine> Group<SM> {
    /// Starts the group on this node: openraft over `stores`, its network
    /// over `wire`, its endpoint in `router`, and its proposer. Initializes
    /// the group on its very first start if this node has the smallest id.
    pub async fn start<L>(
        options: GroupOptions,
        stores: GroupStores<SM, L>,
        wire: Arc<dyn Wire>,
        router: &Router,
    ) -> Result<Group<SM>, GroupError>
    where
        L: openraft::storage::RaftLogStorage<GroupConfig<SM>> + Clone,
    {
        let group = options.group.clone();
        let (election_min, election_max) = staggered_election_timeout(&options);
        let config = openraft::Config {
            cluster_name: group.clone(),
            heartbeat_interval: options.heartbeat_ms,
            election_timeout_min: election_min,
            election_timeout_max: election_max,
            max_payload_entries: REPLICATION_ENTRIES_MAX,
            // Snapshots are triggered by `snapshot_trigger`, at this node's
            // own offset, not by openraft at the same index on every node.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: options.snapshot_logs_to_keep,
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
            ..openraft::Config::default()
        };
        let config = Arc::new(config.validate().map_err(|e| GroupError::Config {
            group: group.clone(),
            message: e.to_string(),
        })?);
        let reader = stores.state_machine.reader();
        let log_end_at_start = {
            let mut log = stores.log.clone();
            log.get_log_state()
                .await
                .map_err(|e| GroupError::Raft {
                    group: group.clone(),
                    message: e.to_string(),
                })?
                .last_log_id
                .map(|id| id.index)
        };
        let addresses = Arc::new(options.members.clone());
        let network = Network::<SM>::new(
            group.clone(),
            options.node_id,
            wire.clone(),
            addresses.clone(),
            options.snapshot_chunk_bytes,
        );
        let incoming_dir = stores.state_machine.incoming_dir();
        let installs = stores.state_machine.install_marker();
        let snapshot_stats = stores.state_machine.stats();
        let raft = openraft::Raft::new(options.node_id, config, network, stores.log, stores.state_machine)
            .await
            .map_err(|e| GroupError::Raft {
                group: group.clone(),
                message: e.to_string(),
            })?;
        let endpoint = Arc::new(RaftEndpoint::new(raft.clone(), incoming_dir, installs));
        tokio::spawn(endpoint.clone().campaign_when_leader_silent());
        router.add(group.clone(), endpoint.clone());

        let first = options.members.keys().next().copied();
        let initialized = raft.is_initialized().await.map_err(|e| GroupError::Raft {
            group: group.clone(),
            message: e.to_string(),
        })?;
        // A joining node never initializes: it waits for the group's leader
        // to add it. Nor does a node whose log or vote is not empty
        // (`is_initialized`).
        if !initialized && !options.join && first == Some(options.node_id) {
            let members: BTreeMap<NodeId, Node> = options
                .members
                .iter()
                .map(|(id, addr)| (*id, Node::new(addr.clone())))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                // Already initialized (a vote or log arrived first) is fine.
                if !matches!(
                    e,
                    RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))
                ) {
                    return Err(GroupError::Raft {
                        group,
                        message: e.to_string(),
                    });
                }
            }
        }

        tokio::spawn(snapshot_trigger(
            raft.clone(),
            options.snapshot_logs,
            snapshot_offset(&options),
            snapshot_stats.clone(),
        ));
        let queue_max = options.proposal_queue_max.max(1);
        let (proposals_tx, proposals_rx) = mpsc::channel(queue_max);
        let propose_timeout = Duration::from_millis(options.propose_timeout_ms.max(1));
        let health = Health::default();
        let slots = options.batches_in_flight.max(1);
        let write_slots = Arc::new(Semaphore::new(slots));
        tokio::spawn(propose_loop(
            raft.clone(),
            proposals_rx,
            Proposer {
                group: group.clone(),
                slots: write_slots.clone(),
                timeout: propose_timeout,
                addresses: addresses.clone(),
                health: health.clone(),
                batch_commands: metrics::histogram!("reservoir_raft_batch_commands", "group" => group.clone()),
            },
        ));
        Ok(Group {
            name: group,
            node_id: options.node_id,
            raft,
            reader,
            proposals_tx,
            queue_max,
            router: router.clone(),
            addresses,
            wire,
            write_slots,
            slots,
            election_timeout_max_ms: options.election_timeout_max_ms,
            snapshot_stats,
            log_end_at_start,
            start_covered: std::sync::atomic::AtomicBool::new(false),
            propose_timeout,
            health,
        })
    }

    /// The group id.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlying openraft handle (membership changes, tests).
    pub fn raft(&self) -> &GroupRaft<SM> {
        &self.raft
    }

    /// Proposes one command and waits for its outcome, at most the group's
    /// bound ([`GroupOptions::propose_timeout_ms`]). Fails at once with
    /// `Overloaded` when the queue is full, and with `NotLeader` when this
    /// node is not the leader; with `Timeout` (outcome unknown) when the
    /// bound passes first.
    ///
    /// The bound is needed: openraft 0.9 answers a `client_write` only once
    /// its entry is applied on this node, or truncated from its log
    /// (`RaftCore::handle_apply_result`, and `Command::DeleteConflictLog`,
    /// which answers `ForwardToLeader`). A leader cut off after its followers
    /// stored a batch, whose log the new leader then snapshots and purges
    /// past, is brought up to date by that snapshot: its entry is neither
    /// applied here nor truncated (`FollowingHandler::install_full_snapshot`
    /// truncates only on a conflicting log id), and the write is never
    /// answered. The batch's own write is bounded the same way, so its slot
    /// comes back (the late answer, if any, is dropped).
    pub async fn propose(&self, command: SM::Command) -> Result<SM::Outcome, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.submit(Proposal::One { command, reply })?;
        self.answer(rx).await?
    }

    /// Proposes `commands` in one log entry (one commit for all of them)
    /// and returns their outcomes in order. As [`Group::propose`] otherwise;
    /// at most [`BATCH_COMMANDS_MAX`] commands of at most
    /// [`BATCH_BYTES_MAX`] estimated bytes in all, else
    /// [`ProposeError::TooLarge`] at once.
    pub async fn propose_many(&self, commands: Vec<SM::Command>) -> Result<Vec<SM::Outcome>, ProposeError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let bytes: u64 = commands.iter().map(estimate).sum();
        if commands.len() > BATCH_COMMANDS_MAX || bytes > BATCH_BYTES_MAX {
            return Err(ProposeError::TooLarge(format!(
                "{} commands of {bytes} estimated bytes, over {BATCH_COMMANDS_MAX} commands or \
                 {BATCH_BYTES_MAX} bytes",
                commands.len()
            )));
        }
        let (reply, rx) = oneshot::channel();
        self.submit(Proposal::Many {
            commands,
            bytes,
            reply,
        })?;
        self.answer(rx).await?
    }

    /// Queues a proposal for the proposer, if this node leads and the queue
    /// has room.
    fn submit(&self, proposal: Proposal<SM>) -> Result<(), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        match self.proposals_tx.try_send(proposal) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(ProposeError::Overloaded),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(ProposeError::Stopped("proposer stopped".into()))
            }
        }
    }

    /// Waits for a queued proposal's answer, at most the group's bound.
    async fn answer<T>(
        &self,
        rx: oneshot::Receiver<Result<T, ProposeError>>,
    ) -> Result<Result<T, ProposeError>, ProposeError> {
        let started = Instant::now();
        match tokio::time::timeout(self.propose_timeout, rx).await {
            Ok(answer) => {
                Ok(answer
                    .unwrap_or_else(|_| Err(ProposeError::Stopped("proposer dropped the proposal".into()))))
            }
            Err(_) => {
                // The proposer skips a proposal whose caller has gone, if
                // it has not taken it into a batch yet.
                metrics::counter!("reservoir_raft_propose_timeouts_total", "group" => self.name.clone())
                    .increment(1);
                Err(ProposeError::Timeout {
                    waited_ms: started.elapsed().as_millis() as u64,
                })
            }
        }
    }

    /// Reads the state this node has applied (may lag the leader).
    pub fn read<R>(&self, f: impl FnOnce(&SM) -> R) -> Result<R, ProposeError> {
        self.reader
            .read(|s| f(&s.machine))
            .map_err(|e| ProposeError::Stopped(e.to_string()))
    }

    /// Reads the state this node has applied, with the log index it has
    /// applied up to (one consistent view: a backup's state and index).
    pub fn read_indexed<R>(&self, f: impl FnOnce(&SM) -> R) -> Result<(R, Option<u64>), ProposeError> {
        self.reader
            .read(|s| (f(&s.machine), s.last_applied.map(|l| l.index)))
            .map_err(|e| ProposeError::Stopped(e.to_string()))
    }

    /// A linearizable read: on the leader, after confirming leadership with a
    /// quorum (openraft's read index) and applying up to it.
    ///
    /// openraft 0.9 restores a node that led before a restart as leader at
    /// once, at its old term and without a blank entry of its own; its read
    /// index is then the commit index it restored, which can be older than
    /// what it acknowledged before a crash (`save_committed` is not flushed),
    /// and a read there could miss an acknowledged write. The read index is
    /// even of the current term when the restored commit index is an entry
    /// of the term the node led before the crash (seen in `region_restart`'s
    /// SIGKILL test: `GetReservation` of the last acknowledged hold answered
    /// NOT_FOUND right after the restart). So a read index below the end of
    /// the log this node started with, or of an older term, is not trusted:
    /// an empty batch is committed first, which commits and applies
    /// everything before it. That happens once per start and once per term
    /// at most.
    ///
    /// Bounded like [`Group::propose`]: `Timeout` when the read index or the
    /// empty batch takes longer than the group's bound.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&SM) -> R) -> Result<R, ProposeError> {
        let started = Instant::now();
        match tokio::time::timeout(self.propose_timeout, self.read_linearizable_unbounded(f)).await {
            Ok(read) => read,
            Err(_) => {
                self.health.timed_out();
                metrics::counter!("reservoir_raft_read_timeouts_total", "group" => self.name.clone())
                    .increment(1);
                Err(ProposeError::Timeout {
                    waited_ms: started.elapsed().as_millis() as u64,
                })
            }
        }
    }

    async fn read_linearizable_unbounded<R>(&self, f: impl FnOnce(&SM) -> R) -> Result<R, ProposeError> {
        if reservoir_tokens::inject::on(reservoir_tokens::inject::Bug::StaleLeaderRead) && self.is_leader() {
            // The injected bug: a node that believes it leads answers from
            // its own state, without asking a quorum.
            return self.read(f);
        }
        let read_log_id = self.read_index().await?;
        let term = self.raft.metrics().borrow().current_term;
        let older_term = read_log_id.map(|id| id.leader_id.term) != Some(term);
        let before_start = !self.start_covered.load(std::sync::atomic::Ordering::Relaxed)
            && read_log_id.map(|id| id.index) < self.log_end_at_start;
        if older_term || before_start {
            if let Err(e) = self.raft.client_write(Batch::new(Vec::new())).await {
                return Err(match write_error(&self.addresses, e) {
                    ProposeError::NotLeader { leader: None } => ProposeError::NotLeader {
                        leader: self.leader(),
                    },
                    other => other,
                });
            }
            self.read_index().await?;
        }
        // Past the log this node started with once: every later read index
        // is too (the empty batch above, or a later entry, committed it).
        self.start_covered
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.read(f)
    }

    /// openraft's read index: confirms leadership with a quorum and waits
    /// until this node has applied up to the returned log id.
    ///
    /// openraft 0.9.25 confirms leadership with one heartbeat to each
    /// follower and gives each reply one heartbeat interval (50 ms by
    /// default), with no second try: on a loaded host a follower that
    /// answers in 60 ms fails the read though the group is healthy (seen
    /// in the compose cluster: a ledger leader whose every read failed while
    /// replication kept acknowledging). So a read that found too few
    /// replies asks again, up to [`READ_QUORUM_TRIES`] times (the caller's
    /// bound, `propose_timeout`, still holds); a leader that really lost
    /// its quorum is answered by a later `ForwardToLeader` or the bound.
    async fn read_index(&self) -> Result<Option<openraft::LogId<NodeId>>, ProposeError> {
        let mut tries = 0;
        loop {
            tries += 1;
            return match self.raft.ensure_linearizable().await {
                Ok(read_log_id) => Ok(read_log_id),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(fwd))) => {
                    Err(ProposeError::NotLeader {
                        leader: self.leader_of(&fwd),
                    })
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))
                    if tries < READ_QUORUM_TRIES =>
                {
                    metrics::counter!("reservoir_raft_read_quorum_retries_total", "group" => self.name.clone())
                        .increment(1);
                    tokio::time::sleep(READ_QUORUM_RETRY_PAUSE).await;
                    continue;
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                    Err(ProposeError::NoQuorum(e.to_string()))
                }
                Err(RaftError::Fatal(e)) => Err(ProposeError::Stopped(e.to_string())),
            };
        }
    }

    /// True when this node is the group's leader.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
    }

    /// The term this node leads in, if it is the group's leader.
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader).then_some(m.current_term)
    }

    /// The leader's id and address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id);
        let addr = self.addresses.get(&id).or(node.map(|n| &n.addr))?;
        Some((id, addr.clone()))
    }

    fn leader_of(&self, fwd: &ForwardToLeader<NodeId, Node>) -> Option<(NodeId, String)> {
        forward_target(&self.addresses, fwd).or_else(|| self.leader())
    }

    /// Waits until the group has a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .ok()?;
        m.current_leader
    }

    /// Where the group stands on this node.
    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics();
        let m = m.borrow();
        GroupStatus {
            group: self.name.clone(),
            node_id: self.node_id,
            role: match m.state {
                ServerState::Leader => Role::Leader,
                ServerState::Follower => Role::Follower,
                ServerState::Candidate => Role::Candidate,
                ServerState::Learner => Role::Learner,
                ServerState::Shutdown => Role::Shutdown,
            },
            term: m.current_term,
            leader: m.current_leader,
            applied_index: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            snapshot_index: m.snapshot.map(|l| l.index),
            members: m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
            snapshots: self.snapshot_stats.get(),
        }
    }

    /// Stops the group: no new proposals, openraft shut down, endpoint
    /// removed. Proposals already queued get `Stopped` or their outcome.
    pub async fn shutdown(&self) {
        self.router.remove(&self.name);
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(group = %self.name, error = %e, "raft group shutdown failed");
        }
    }

    /// Proposals waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.queue_max - self.proposals_tx.capacity()
    }

    /// The bound of the proposal queue.
    pub fn queue_max(&self) -> usize {
        self.queue_max
    }

    /// The bound of every wait on consensus in this group.
    pub fn propose_timeout(&self) -> Duration {
        self.propose_timeout
    }

    /// Snapshot builds that failed on this node since it started (each one
    /// skipped: the group kept its previous snapshot).
    pub fn snapshot_failures(&self) -> u64 {
        self.snapshot_stats.failures()
    }

    /// Why this node cannot commit through this group now, if it cannot:
    /// a batch has waited for its commit longer than half the group's bound,
    /// or a batch or linearizable read timed out within the last two bounds
    /// and no batch has committed since. What `/readyz` reports; one short
    /// lock, no I/O.
    pub fn commit_stall(&self) -> Option<CommitStall> {
        self.health.stall(Instant::now(), self.propose_timeout)
    }
}

/// Why a node cannot commit through a group (see [`Group::commit_stall`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitStall {
    /// The oldest batch being written has waited this long.
    #[error("a batch has waited {waited_ms} ms for its commit")]
    BatchWaiting {
        /// How long it has waited.
        waited_ms: u64,
    },
    /// A batch or a linearizable read timed out this long ago, and no batch
    /// has committed since.
    #[error("a proposal timed out {ago_ms} ms ago and none has committed since")]
    TimedOut {
        /// How long ago.
        ago_ms: u64,
    },
}

/// What the proposer has seen of its own commits lately: the batches being
/// written and when each began, when a batch last committed and when a wait
/// last timed out. Shared by the proposer's tasks and the group; every lock
/// is held for a few assignments.
#[derive(Clone, Default)]
struct Health(Arc<Mutex<HealthRecord>>);

#[derive(Default)]
struct HealthRecord {
    /// Start of each batch being written, by batch number (at most the
    /// group's write slots).
    in_flight: BTreeMap<u64, Instant>,
    next_batch: u64,
    last_commit: Option<Instant>,
    last_timeout: Option<Instant>,
}

/// A batch being written; it leaves the record when dropped, however its
/// task ends.
struct InFlight {
    health: Health,
    batch: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.health.lock().in_flight.remove(&self.batch);
    }
}

impl Health {
    fn begin(&self) -> InFlight {
        let mut record = self.lock();
        let batch = record.next_batch;
        record.next_batch += 1;
        record.in_flight.insert(batch, Instant::now());
        InFlight {
            health: self.clone(),
            batch,
        }
    }

    fn committed(&self) {
        self.lock().last_commit = Some(Instant::now());
    }

    fn timed_out(&self) {
        self.lock().last_timeout = Some(Instant::now());
    }

    /// See [`Group::commit_stall`].
    fn stall(&self, now: Instant, bound: Duration) -> Option<CommitStall> {
        let record = self.lock();
        if let Some(started) = record.in_flight.values().min() {
            let waited = now.saturating_duration_since(*started);
            if waited > bound / 2 {
                return Some(CommitStall::BatchWaiting {
                    waited_ms: waited.as_millis() as u64,
                });
            }
        }
        let timed_out = record.last_timeout?;
        let ago = now.saturating_duration_since(timed_out);
        (ago <= bound * 2 && record.last_commit.is_none_or(|c| c < timed_out)).then_some(
            CommitStall::TimedOut {
                ago_ms: ago.as_millis() as u64,
            },
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthRecord> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// This node's own slice of the election timeout range.
///
/// openraft 0.9 draws a node's election timeout once, when the node starts,
/// so two survivors whose draws happen to be close can split the vote round
/// after round (seen: 3.5–6 s failovers). Giving each voter its own,
/// non-overlapping slice of `[min, max)` — the k-th smallest id the k-th
/// slice, each half a step wide — makes the next candidate always the same
/// one, well ahead of the others. It also shortens failover: openraft waits a
/// leader lease equal to the node's `election_timeout_max` plus its election
/// timeout before it campaigns.
pub fn staggered_election_timeout(options: &GroupOptions) -> (u64, u64) {
    let (min, max) = (options.election_timeout_min_ms, options.election_timeout_max_ms);
    let n = options.members.len() as u64;
    let Some(k) = options.members.keys().position(|id| *id == options.node_id) else {
        return (min, max);
    };
    let step = max.saturating_sub(min) / n.max(1);
    if n < 2 || step < 20 {
        return (min, max);
    }
    let low = min + k as u64 * step;
    (low, low + step / 2)
}

/// This node's offset in the group's snapshot schedule: the k-th smallest
/// voter id builds at log indexes `k × interval / n + m × interval`, so the
/// voters of a group take turns rather than all building at the same index
/// (on shared cores, three nodes building at once stall the whole group).
pub fn snapshot_offset(options: &GroupOptions) -> u64 {
    let n = options.members.len() as u64;
    match options.members.keys().position(|id| *id == options.node_id) {
        Some(k) if n > 1 => k as u64 * options.snapshot_logs / n,
        _ => 0,
    }
}

/// Whether a snapshot is due: a point of this node's schedule
/// (`offset + m × interval`, m ≥ 0) lies after the last snapshot (index 0 if
/// none) and at or before the applied index.
pub fn snapshot_due(applied: u64, snapshot: Option<u64>, interval: u64, offset: u64) -> bool {
    if interval == 0 {
        return false;
    }
    let points_upto = |index: u64| index.checked_sub(offset).map_or(0, |d| d / interval + 1);
    points_upto(applied) > points_upto(snapshot.unwrap_or(0))
}

/// Asks openraft for a snapshot whenever this node's schedule says one is
/// due, until the group shuts down. openraft ignores the request while a
/// build is running. After a failed build it waits as `stats` says
/// ([`SnapshotStatsHandle::retry_at`]).
async fn snapshot_trigger<SM: GroupMachine>(
    raft: GroupRaft<SM>,
    interval: u64,
    offset: u64,
    stats: SnapshotStatsHandle,
) {
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let (applied, snapshot, state) = {
            let m = raft.metrics();
            let m = m.borrow();
            (
                m.last_applied.map(|l| l.index),
                m.snapshot.map(|l| l.index),
                m.state,
            )
        };
        if state == ServerState::Shutdown {
            return;
        }
        let Some(applied) = applied else { continue };
        if stats.retry_at().is_some_and(|at| Instant::now() < at) {
            continue;
        }
        if snapshot_due(applied, snapshot, interval, offset) && raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

/// How the proposer of one group works.
struct Proposer {
    /// The group id (metrics, log lines).
    group: String,
    /// Its write slots: a batch is written while it holds one (all of them
    /// held elsewhere pause the proposer).
    slots: Arc<Semaphore>,
    /// The bound of one batch's write.
    timeout: Duration,
    addresses: Arc<BTreeMap<NodeId, String>>,
    health: Health,
    /// `reservoir_raft_batch_commands{group}`: commands per log entry.
    batch_commands: metrics::Histogram,
}

/// Drains the proposal queue into batches, each one log entry, with at most
/// `slots` being written at a time. A batch's write is bounded by the
/// group's timeout: when it fires, every caller still waiting gets
/// `Timeout` (outcome unknown) and the slot is free again; openraft may
/// still answer the write later, into a dropped channel. A proposal whose
/// caller has already given up is not proposed.
async fn propose_loop<SM: GroupMachine>(
    raft: GroupRaft<SM>,
    mut rx: mpsc::Receiver<Proposal<SM>>,
    proposer: Proposer,
) {
    let proposer = Arc::new(proposer);
    let mut carry: Option<Proposal<SM>> = None;
    loop {
        let first = loop {
            let next = match carry.take() {
                Some(p) => p,
                None => match rx.recv().await {
                    Some(p) => p,
                    None => return,
                },
            };
            if !next.abandoned() {
                break next;
            }
        };
        // Then a write slot: while every slot is busy (or a leadership
        // transfer holds them all), proposals pile up in the queue and the
        // next batch grows (group commit). The first proposal comes before
        // the slot so that an idle proposer holds no slot.
        let Ok(permit) = proposer.slots.clone().acquire_owned().await else {
            return;
        };
        if first.abandoned() {
            drop(permit);
            continue;
        }
        // A proposal's commands stay together: one that would overflow this
        // batch starts the next one (`propose_many` keeps every proposal
        // within one batch's bounds).
        let mut count = first.len();
        let mut bytes = first.bytes();
        let mut commands = Vec::with_capacity(count);
        let mut replies = vec![first.split(&mut commands)];
        while count < BATCH_COMMANDS_MAX {
            match rx.try_recv() {
                Ok(p) if p.abandoned() => {}
                Ok(p) => {
                    let size = p.bytes();
                    if bytes + size > BATCH_BYTES_MAX || count + p.len() > BATCH_COMMANDS_MAX {
                        carry = Some(p);
                        break;
                    }
                    bytes += size;
                    count += p.len();
                    replies.push(p.split(&mut commands));
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let proposer = proposer.clone();
        tokio::spawn(async move {
            proposer.batch_commands.record(commands.len() as f64);
            let writing = proposer.health.begin();
            let written =
                tokio::time::timeout(proposer.timeout, raft.client_write(Batch::new(commands))).await;
            drop(writing);
            match written {
                Ok(Ok(response)) => {
                    proposer.health.committed();
                    let mut outcomes = response.data.into_iter();
                    for reply in replies {
                        reply.send(&mut outcomes);
                    }
                    debug_assert!(outcomes.next().is_none(), "one outcome per command");
                }
                Ok(Err(e)) => {
                    let error = write_error(&proposer.addresses, e);
                    for reply in replies {
                        reply.fail(error.clone());
                    }
                }
                Err(_) => {
                    proposer.health.timed_out();
                    metrics::counter!("reservoir_raft_batch_timeouts_total", "group" => proposer.group.clone())
                        .increment(1);
                    let waited_ms = proposer.timeout.as_millis() as u64;
                    tracing::warn!(
                        group = %proposer.group,
                        commands = count,
                        waited_ms,
                        "a batch got no outcome in time; its callers are told the outcome is unknown and its \
                         write slot is free again"
                    );
                    for reply in replies {
                        reply.fail(ProposeError::Timeout { waited_ms });
                    }
                }
            }
            drop(permit);
        });
    }
}

/// The leader a `ForwardToLeader` names, at this node's address for it
/// (see [`GroupOptions::members`]); `None` when it names none.
fn forward_target(
    addresses: &BTreeMap<NodeId, String>,
    fwd: &ForwardToLeader<NodeId, Node>,
) -> Option<(NodeId, String)> {
    let id = fwd.leader_id?;
    let addr = addresses.get(&id).or(fwd.leader_node.as_ref().map(|n| &n.addr))?;
    Some((id, addr.clone()))
}

/// A failed `client_write` as a [`ProposeError`].
fn write_error(
    addresses: &BTreeMap<NodeId, String>,
    e: RaftError<NodeId, ClientWriteError<NodeId, Node>>,
) -> ProposeError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(fwd)) => ProposeError::NotLeader {
            leader: forward_target(addresses, &fwd),
        },
        RaftError::APIError(other) => ProposeError::Stopped(other.to_string()),
        RaftError::Fatal(f) => ProposeError::Stopped(f.to_string()),
    }
}

fn estimate<T: serde::Serialize>(command: &T) -> u64 {
    bincode::serialized_size(command).unwrap_or(BATCH_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch waiting past half the bound, or a timeout with no commit
    /// after it, is a stall; a stall ends when the batch leaves, when a
    /// batch commits, or two bounds after the timeout.
    #[test]
    fn commit_stalls_are_reported_and_end() {
        let bound = Duration::from_secs(4);
        let health = Health::default();
        let t0 = Instant::now();
        assert_eq!(health.stall(t0, bound), None);
        let writing = health.begin();
        assert_eq!(health.stall(t0 + Duration::from_secs(1), bound), None);
        assert!(matches!(
            health.stall(t0 + Duration::from_secs(3), bound),
            Some(CommitStall::BatchWaiting { waited_ms }) if waited_ms >= 2_000
        ));
        drop(writing);
        assert_eq!(health.stall(t0 + Duration::from_secs(3), bound), None);

        health.timed_out();
        let t1 = Instant::now();
        assert!(matches!(
            health.stall(t1 + Duration::from_secs(1), bound),
            Some(CommitStall::TimedOut { .. })
        ));
        assert_eq!(
            health.stall(t1 + Duration::from_secs(9), bound),
            None,
            "forgotten after two bounds"
        );
        health.committed();
        assert_eq!(
            health.stall(t1 + Duration::from_secs(1), bound),
            None,
            "a commit ends it"
        );
    }

    /// Each voter gets its own slice of the election range, and the slices
    /// do not overlap.
    #[test]
    fn election_timeouts_are_staggered() {
        let members: BTreeMap<NodeId, String> = (1..=3).map(|id| (id, format!("n{id}"))).collect();
        let slice = |id| {
            let mut o = GroupOptions::new("g", id, members.clone());
            o.election_timeout_min_ms = 400;
            o.election_timeout_max_ms = 1_000;
            staggered_election_timeout(&o)
        };
        assert_eq!(slice(1), (400, 500));
        assert_eq!(slice(2), (600, 700));
        assert_eq!(slice(3), (800, 900));
        // A node that is not a member, or a one-node group, keeps the range.
        assert_eq!(slice(9), (400, 1_000));
        let one = GroupOptions::new("g", 1, [(1, "n1".to_string())].into_iter().collect());
        assert_eq!(staggered_election_timeout(&one), (150, 300));
    }

    /// The voters of a group snapshot at different indexes, each once per
    /// interval.
    #[test]
    fn snapshots_are_staggered() {
        let members: BTreeMap<NodeId, String> = (1..=3).map(|id| (id, format!("n{id}"))).collect();
        let offset = |id| {
            let mut o = GroupOptions::new("g", id, members.clone());
            o.snapshot_logs = 300;
            snapshot_offset(&o)
        };
        assert_eq!((offset(1), offset(2), offset(3)), (0, 100, 200));
        // Node 1: at 300, 600, ...; none before the first interval.
        assert!(!snapshot_due(299, None, 300, 0));
        assert!(snapshot_due(300, None, 300, 0));
        assert!(!snapshot_due(599, Some(300), 300, 0));
        assert!(snapshot_due(650, Some(310), 300, 0));
        // Node 2: at 100, 400, ...
        assert!(!snapshot_due(99, None, 300, 100));
        assert!(snapshot_due(100, None, 300, 100));
        assert!(!snapshot_due(399, Some(120), 300, 100));
        assert!(snapshot_due(400, Some(120), 300, 100));
        // A snapshot installed from the leader counts as this node's own.
        assert!(!snapshot_due(450, Some(420), 300, 100));
        assert!(!snapshot_due(10, None, 0, 0), "an interval of 0 never snapshots");
    }
}
