//! The Redis baseline: one `redis-server` that this adapter starts on a
//! private port and temporary folder, and stops afterwards.
//!
//! Data model (one server, so keys need no hash tags):
//! - `s:{sku}`: a hash with `stocked`, `available`, `held`, `sold`;
//! - `h:{request_id}`: a hold, `s:{sku}=qty,...`, with a TTL of the hold
//!   time plus [`HOLD_KEY_GRACE_MS`] (one more write per reserve, as a
//!   real hold needs; the grace lets the sweeper still read the lines when
//!   it returns an expired hold's units);
//! - `holds`: a sorted set of hold keys by expiry time (ms), swept every
//!   [`SWEEP_INTERVAL`] by a script that returns expired holds' units;
//! - `c:{request_id}`: a short-lived marker that makes a retried confirm
//!   idempotent.
//!
//! Reserve, confirm, release and sweep are Lua scripts, so each is one
//! atomic check-and-modify: a reserve checks every line's `available` before
//! taking any. The hold id is the request id, so a retried reserve finds its
//! hold instead of taking the units twice. Durable mode is
//! `--appendonly yes --appendfsync always`: Redis fsyncs the AOF before it
//! answers the clients of an event-loop turn (group commit across clients).
//!
//! The client is the `redis` crate (tokio, RESP2): each region has a
//! bounded pool (deadpool) of up to `--connections` multiplexed
//! connections, each lent to one operation at a time, so every operation
//! in flight has a connection of its own, as a pool of plain connections
//! would give; the sweeper has one more. Scripts go by `EVALSHA`
//! ([`::redis::Script`], loaded at start). Every call is bounded by
//! [`OP_TIMEOUT`], and every read by the client's response timeout.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::io::tcp::TcpSettings;
use ::redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError, Script, Value};
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleResult};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::server::{ServerProcess, find_in_path, free_port};
use super::{OpError, POOL_SIZE_MAX, ServerSku, ServerView, TargetError, reason};
use crate::workload::Catalog;

/// Time a hold key outlives its hold, so the sweeper can read it.
pub const HOLD_KEY_GRACE_MS: u64 = 60_000;
/// Lifetime of a confirm's idempotency marker.
pub const CONFIRM_MARKER_TTL_MS: u64 = 600_000;
/// How often expired holds are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Most holds one sweep returns.
pub const SWEEP_BATCH_MAX: u64 = 1_000;
/// Longest one operation may take before its connection is given up; also
/// the client's connect and response timeouts, so every read is bounded.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server has to answer PING after it starts.
pub const START_DEADLINE: Duration = Duration::from_secs(20);
/// How often a starting server is pinged.
pub const START_POLL: Duration = Duration::from_millis(50);
/// Error codes after which the same call may simply be sent again.
const RETRY_CODES: [&str; 4] = ["BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN"];

const RESERVE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
local n = #KEYS - 2
for i = 1, n do
  local a = tonumber(redis.call('HGET', KEYS[i + 2], 'available') or '0')
  if a < tonumber(ARGV[i + 2]) then return -i end
end
local lines = {}
for i = 1, n do
  local q = tonumber(ARGV[i + 2])
  redis.call('HINCRBY', KEYS[i + 2], 'available', -q)
  redis.call('HINCRBY', KEYS[i + 2], 'held', q)
  lines[i] = KEYS[i + 2] .. '=' .. q
end
local ttl = tonumber(ARGV[1])
redis.call('SET', KEYS[2], table.concat(lines, ','), 'PX', ttl + tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now + ttl, KEYS[2])
return 1
"#;

const CONFIRM_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = redis.call('ZSCORE', KEYS[1], KEYS[2])
if not exp then
  if redis.call('EXISTS', KEYS[3]) == 1 then return 2 end
  return 0
end
if tonumber(exp) <= now then return -1 end
local v = redis.call('GET', KEYS[2])
if not v then return -2 end
for key, q in string.gmatch(v, '([^,=]+)=(%d+)') do
  redis.call('HINCRBY', key, 'held', -tonumber(q))
  redis.call('HINCRBY', key, 'sold', tonumber(q))
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], '1', 'PX', tonumber(ARGV[1]))
return 1
"#;

const RELEASE_LUA: &str = r#"
if not redis.call('ZSCORE', KEYS[1], KEYS[2]) then return 0 end
local v = redis.call('GET', KEYS[2])
if not v then return -2 end
for key, q in string.gmatch(v, '([^,=]+)=(%d+)') do
  redis.call('HINCRBY', key, 'held', -tonumber(q))
  redis.call('HINCRBY', key, 'available', tonumber(q))
end
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[1], KEYS[2])
return 1
"#;

const SWEEP_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local lost = 0
for _, id in ipairs(ids) do
  local v = redis.call('GET', id)
  if v then
    for key, q in string.gmatch(v, '([^,=]+)=(%d+)') do
      redis.call('HINCRBY', key, 'held', -tonumber(q))
      redis.call('HINCRBY', key, 'available', tonumber(q))
    end
  else
    lost = lost + 1
  end
  redis.call('DEL', id)
  redis.call('ZREM', KEYS[1], id)
end
return {#ids, lost}
"#;

/// The expiry index.
const HOLDS_KEY: &str = "holds";

/// Durable or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// `--appendonly yes --appendfsync always`.
    Durable,
    /// `--save '' --appendonly no`.
    None,
}

/// The four scripts, sent by `EVALSHA` ([`Script`] loads one again if the
/// server answers `NOSCRIPT`).
struct Scripts {
    reserve: Script,
    confirm: Script,
    release: Script,
    sweep: Script,
}

/// Makes the connections of a pool: one multiplexed connection each, which
/// the pool lends to one operation at a time, so each in-flight operation
/// has a connection of its own. Recycling checks nothing (deadpool-redis
/// would send a `PING` on every checkout, one more round trip per
/// operation): a connection that failed or timed out is taken out of its
/// pool by the caller instead.
struct Connector {
    client: Client,
    config: AsyncConnectionConfig,
}

impl managed::Manager for Connector {
    type Type = MultiplexedConnection;
    type Error = RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, RedisError> {
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }

    async fn recycle(&self, _conn: &mut MultiplexedConnection, _: &Metrics) -> RecycleResult<RedisError> {
        Ok(())
    }
}

/// A bounded pool of connections (at most [`POOL_SIZE_MAX`]), made on
/// demand.
type Pool = managed::Pool<Connector>;

/// The adapter.
pub struct RedisTarget {
    addr: String,
    client: Client,
    config: AsyncConnectionConfig,
    pools: Vec<Pool>,
    /// The sweeper's own connection, so it never waits behind the load.
    maintenance: Pool,
    scripts: Scripts,
    server: tokio::sync::Mutex<Option<ServerProcess>>,
    /// Holds whose lines were gone when the sweeper came (should stay 0).
    lost_holds: Arc<std::sync::atomic::AtomicU64>,
    sweeper: std::sync::Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

fn sku_key(sku: &str) -> String {
    format!("s:{sku}")
}

fn hold_key(id: &str) -> String {
    format!("h:{id}")
}

fn as_int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// A pool of `size` connections.
fn pool(client: &Client, config: &AsyncConnectionConfig, size: usize) -> Result<Pool, TargetError> {
    Pool::builder(Connector {
        client: client.clone(),
        config: config.clone(),
    })
    .max_size(size.clamp(1, POOL_SIZE_MAX))
    .create_timeout(Some(OP_TIMEOUT))
    .runtime(deadpool::Runtime::Tokio1)
    .build()
    .map_err(|e| TargetError::Setup(format!("redis connection pool: {e}")))
}

/// Why no connection could be had.
fn pool_error(e: PoolError<RedisError>) -> OpError {
    match e {
        PoolError::Timeout(_) => OpError::retryable(reason::TIMEOUT, "connecting to redis timed out"),
        PoolError::Backend(e) => OpError::retryable(reason::UNAVAILABLE, format!("connecting to redis: {e}")),
        other => OpError::retryable(reason::UNAVAILABLE, format!("redis connection pool: {other}")),
    }
}

impl RedisTarget {
    /// Starts `redis-server` and connects `regions` pools of `pool_size`.
    pub async fn start(
        persistence: Persistence,
        regions: usize,
        pool_size: usize,
    ) -> Result<Arc<RedisTarget>, TargetError> {
        let exe = find_in_path("redis-server").ok_or_else(|| {
            TargetError::Absent(
                "redis-server is not installed (apt-get install redis-server); the redis targets need it"
                    .into(),
            )
        })?;
        let dir = tempfile::Builder::new()
            .prefix("reservoir-loadtest-redis-")
            .tempdir()
            .map_err(|e| TargetError::Setup(format!("temporary folder for redis: {e}")))?;
        let port = free_port().map_err(|e| TargetError::Setup(format!("free port: {e}")))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("--port")
            .arg(port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", ""]);
        match persistence {
            Persistence::Durable => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
            Persistence::None => cmd.args(["--appendonly", "no"]),
        };
        let log = dir.path().join("redis.log");
        let mut server = ServerProcess::spawn(cmd, "redis-server", log, Some(dir))
            .map_err(|e| TargetError::Setup(format!("starting {}: {e}", exe.display())))?;
        let addr = format!("127.0.0.1:{port}");
        // TCP_NODELAY, as any latency-minded client sets it: a reply must
        // not wait for the previous segment's acknowledgement.
        let info = format!("redis://{addr}/")
            .into_connection_info()
            .map_err(|e| TargetError::Setup(format!("redis address {addr}: {e}")))?
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let client =
            Client::open(info).map_err(|e| TargetError::Setup(format!("redis client for {addr}: {e}")))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT));
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let mut conn = loop {
            if !server.running() {
                return Err(TargetError::Setup(format!(
                    "redis-server exited at start:\n{}",
                    server.log_tail()
                )));
            }
            if let Ok(mut c) = client.get_multiplexed_async_connection_with_config(&config).await
                && let Ok(pong) = ::redis::cmd("PING").query_async::<String>(&mut c).await
                && pong == "PONG"
            {
                break c;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TargetError::Setup(format!(
                    "redis-server did not answer PING within {START_DEADLINE:?}:\n{}",
                    server.log_tail()
                )));
            }
            tokio::time::sleep(START_POLL).await;
        };
        let scripts = Scripts {
            reserve: Script::new(RESERVE_LUA),
            confirm: Script::new(CONFIRM_LUA),
            release: Script::new(RELEASE_LUA),
            sweep: Script::new(SWEEP_LUA),
        };
        for (name, script) in [
            ("reserve", &scripts.reserve),
            ("confirm", &scripts.confirm),
            ("release", &scripts.release),
            ("sweep", &scripts.sweep),
        ] {
            script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(|e| TargetError::Setup(format!("loading the {name} script: {e}")))?;
        }
        let pool_size = pool_size.clamp(1, POOL_SIZE_MAX);
        let pools = (0..regions)
            .map(|_| pool(&client, &config, pool_size))
            .collect::<Result<Vec<_>, _>>()?;
        let target = Arc::new(RedisTarget {
            addr,
            maintenance: pool(&client, &config, 1)?,
            client,
            config,
            pools,
            scripts,
            server: tokio::sync::Mutex::new(Some(server)),
            lost_holds: Arc::default(),
            sweeper: std::sync::Mutex::new(None),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let handle = tokio::spawn(sweep_loop(target.clone(), stop_rx));
        if let Ok(mut s) = target.sweeper.lock() {
            *s = Some((stop_tx, handle));
        }
        Ok(target)
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server's pid, until [`Self::shutdown`].
    pub async fn server_pid(&self) -> Option<u32> {
        self.server.lock().await.as_ref().and_then(|s| s.pid())
    }

    /// The connection pool of `region`.
    fn pool(&self, region: usize) -> Result<&Pool, OpError> {
        self.pools
            .get(region)
            .ok_or_else(|| OpError::fatal(reason::SERVER_ERROR, format!("no region {region}")))
    }

    /// A connection of its own, for setup and reading the books.
    async fn connection(&self) -> Result<MultiplexedConnection, TargetError> {
        self.client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
            .map_err(|e| TargetError::Setup(format!("connecting to redis: {e}")))
    }

    /// Runs one script on a connection of `pool`, with the operation
    /// timeout. A connection that broke or timed out leaves the pool; one
    /// that only carried the server's refusal goes back to it.
    async fn eval(
        &self,
        pool: &Pool,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<Value, OpError> {
        let mut conn = pool.get().await.map_err(pool_error)?;
        let mut call = script.prepare_invoke();
        for k in keys {
            call.key(k);
        }
        for a in args {
            call.arg(a);
        }
        let reply = tokio::time::timeout(OP_TIMEOUT, call.invoke_async::<Value>(&mut *conn)).await;
        match reply {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if e.is_timeout() => {
                drop(Object::take(conn));
                Err(OpError::retryable(reason::TIMEOUT, format!("redis: {e}")))
            }
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() => {
                drop(Object::take(conn));
                Err(OpError::retryable(reason::UNAVAILABLE, format!("redis: {e}")))
            }
            Ok(Err(e)) => {
                if e.code().is_some_and(|c| RETRY_CODES.contains(&c)) {
                    Err(OpError::retryable(reason::UNAVAILABLE, e.to_string()))
                } else {
                    Err(OpError::fatal(reason::SERVER_ERROR, e.to_string()))
                }
            }
            Err(_) => {
                drop(Object::take(conn));
                Err(OpError::retryable(reason::TIMEOUT, "redis call timed out"))
            }
        }
    }

    /// Adds every catalog SKU's stock.
    pub async fn stock(&self, catalog: &Catalog) -> Result<(), TargetError> {
        let mut conn = self.connection().await?;
        for s in &catalog.skus {
            ::redis::cmd("HSET")
                .arg(sku_key(&s.sku))
                .arg("stocked")
                .arg(s.stock)
                .arg("available")
                .arg(s.stock)
                .arg("held")
                .arg(0)
                .arg("sold")
                .arg(0)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(|e| TargetError::Setup(format!("stocking {}: {e}", s.sku)))?;
        }
        Ok(())
    }

    /// Reserve: all lines or none; the hold id is the request id.
    pub async fn reserve(
        &self,
        region: usize,
        request_id: &str,
        lines: &[(String, u64)],
        ttl_ms: u64,
    ) -> Result<String, OpError> {
        let mut keys = vec![HOLDS_KEY.to_string(), hold_key(request_id)];
        keys.extend(lines.iter().map(|(sku, _)| sku_key(sku)));
        let mut args = vec![ttl_ms.to_string(), HOLD_KEY_GRACE_MS.to_string()];
        args.extend(lines.iter().map(|(_, q)| q.to_string()));
        match self
            .eval(self.pool(region)?, &self.scripts.reserve, &keys, &args)
            .await
            .map(|v| as_int(&v))?
        {
            Some(1 | 2) => Ok(request_id.to_string()),
            Some(i) if i < 0 => Err(OpError::fatal(
                reason::INSUFFICIENT_STOCK,
                format!("line {} short", -i),
            )),
            other => Err(OpError::fatal(
                reason::SERVER_ERROR,
                format!("reserve answered {other:?}"),
            )),
        }
    }

    /// Confirm a hold (idempotent for a while after success).
    pub async fn confirm(&self, region: usize, id: &str) -> Result<(), OpError> {
        let keys = [HOLDS_KEY.to_string(), hold_key(id), format!("c:{id}")];
        let args = [CONFIRM_MARKER_TTL_MS.to_string()];
        match self
            .eval(self.pool(region)?, &self.scripts.confirm, &keys, &args)
            .await
            .map(|v| as_int(&v))?
        {
            Some(1 | 2) => Ok(()),
            Some(0) => Err(OpError::fatal(reason::RESERVATION_NOT_FOUND, id)),
            Some(-1) => Err(OpError::fatal(reason::RESERVATION_EXPIRED, id)),
            other => Err(OpError::fatal(
                reason::SERVER_ERROR,
                format!("confirm answered {other:?}"),
            )),
        }
    }

    /// Release a hold (idempotent: releasing a gone hold is OK).
    pub async fn release(&self, region: usize, id: &str) -> Result<(), OpError> {
        let keys = [HOLDS_KEY.to_string(), hold_key(id)];
        match self
            .eval(self.pool(region)?, &self.scripts.release, &keys, &[])
            .await
            .map(|v| as_int(&v))?
        {
            Some(0 | 1) => Ok(()),
            other => Err(OpError::fatal(
                reason::SERVER_ERROR,
                format!("release answered {other:?}"),
            )),
        }
    }

    /// Sweeps expired holds once; returns how many were returned.
    async fn sweep(&self) -> Result<u64, OpError> {
        let reply = self
            .eval(
                &self.maintenance,
                &self.scripts.sweep,
                &[HOLDS_KEY.to_string()],
                &[SWEEP_BATCH_MAX.to_string()],
            )
            .await?;
        match reply {
            Value::Array(v) if v.len() == 2 => {
                let lost = as_int(&v[1]).unwrap_or(0).max(0) as u64;
                self.lost_holds
                    .fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
                Ok(as_int(&v[0]).unwrap_or(0).max(0) as u64)
            }
            other => Err(OpError::fatal(
                reason::SERVER_ERROR,
                format!("sweep answered {other:?}"),
            )),
        }
    }

    /// Live holds in the expiry index.
    async fn live_holds(&self) -> Result<u64, TargetError> {
        let mut conn = self.connection().await?;
        ::redis::cmd("ZCARD")
            .arg(HOLDS_KEY)
            .query_async::<i64>(&mut conn)
            .await
            .map(|n| n.max(0) as u64)
            .map_err(|e| TargetError::Setup(format!("ZCARD {HOLDS_KEY}: {e}")))
    }

    /// Waits (until `deadline`) for every hold to be confirmed, released or
    /// swept, then reads every SKU's books.
    pub async fn reconcile(
        &self,
        catalog: &Catalog,
        deadline: tokio::time::Instant,
        wait_for_holds: bool,
    ) -> Result<ServerView, TargetError> {
        let started = tokio::time::Instant::now();
        let mut live = self.live_holds().await?;
        while wait_for_holds && live > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            let _ = self.sweep().await;
            live = self.live_holds().await?;
        }
        let mut conn = self.connection().await?;
        let mut skus = BTreeMap::new();
        for s in &catalog.skus {
            let fields: Vec<Option<u64>> = ::redis::cmd("HMGET")
                .arg(sku_key(&s.sku))
                .arg(&["stocked", "available", "held", "sold"])
                .query_async(&mut conn)
                .await
                .map_err(|e| TargetError::Setup(format!("reading {}: {e}", s.sku)))?;
            let field = |i: usize| -> u64 { fields.get(i).copied().flatten().unwrap_or(0) };
            let view = ServerSku {
                stocked: field(0),
                available: field(1),
                held: field(2),
                sold: field(3),
                settled: field(3),
                stranded: 0,
            };
            skus.insert(s.sku.clone(), view);
        }
        let lost = self.lost_holds.load(std::sync::atomic::Ordering::Relaxed);
        let problems = (lost > 0)
            .then(|| format!("{lost} expired holds had lost their lines before the sweep"))
            .into_iter()
            .collect();
        Ok(ServerView::of_baseline(
            catalog,
            skus,
            live,
            wait_for_holds,
            problems,
            started.elapsed().as_secs_f64(),
        ))
    }

    /// Stops the sweeper and the server.
    pub async fn shutdown(&self) {
        let sweeper = self.sweeper.lock().ok().and_then(|mut s| s.take());
        if let Some((stop_tx, handle)) = sweeper {
            let _ = stop_tx.send(true);
            let _ = handle.await;
        }
        for p in self.pools.iter().chain([&self.maintenance]) {
            p.close();
        }
        if let Some(mut server) = self.server.lock().await.take() {
            server.stop(libc::SIGTERM).await;
        }
    }
}

async fn sweep_loop(target: Arc<RedisTarget>, mut stop_rx: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop_rx.changed() => return,
            _ = tick.tick() => {
                // A full batch means more are due: go again at once, a
                // bounded number of times per tick.
                for _ in 0..10 {
                    match target.sweep().await {
                        Ok(n) if n >= SWEEP_BATCH_MAX => continue,
                        _ => break,
                    }
                }
            }
        }
    }
}
