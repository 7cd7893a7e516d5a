//! The PostgreSQL baseline: one server that this adapter initialises
//! (`initdb`) and starts (`postgres`) on a private port and temporary
//! folder, with `synchronous_commit = on` and `fsync = on`, and stops
//! afterwards. As root, both run as the `postgres` user (PostgreSQL refuses
//! to run as root), set on the child process directly.
//!
//! Schema: `stock(sku, stocked, available, held, sold)`, `holds(id, lines,
//! expires_at_ms)` and `confirmed(id)` (makes a retried confirm idempotent).
//! A reserve is one transaction: insert the hold (`ON CONFLICT DO NOTHING`:
//! a retried request id finds its hold and takes nothing twice), then per
//! line, in SKU order, `UPDATE stock SET available = available - q, held =
//! held + q WHERE sku = s AND available >= q`; any line short rolls the
//! whole transaction back. Every transaction locks `stock` rows in SKU
//! order, after any `holds` row, so they cannot deadlock with one another; a
//! deadlock or serialization failure all the same is answered UNAVAILABLE
//! (retried with the same request id). Expired holds are returned by a
//! sweeper every [`SWEEP_INTERVAL`]. Time is this process's clock.
//!
//! The client is `tokio-postgres`, each region's connections in a bounded
//! pool (`deadpool-postgres`, up to `--connections`, fast recycling: no
//! query on checkout) and the sweeper's in a pool of one; every statement is
//! prepared once per connection and cached. Each transaction is bounded by
//! [`OP_TIMEOUT`], and so is every setup or reading query; a connection
//! that broke or timed out leaves its pool.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, PoolError, RecyclingMethod, Runtime};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Config, NoTls};

use super::server::{ServerProcess, free_port, is_root, postgres_bin_dir, run_to_completion, user_ids};
use super::{OpError, POOL_SIZE_MAX, ServerSku, ServerView, TargetError, reason};
use crate::workload::Catalog;

/// The user PostgreSQL runs as when this process is root.
pub const SERVER_USER: &str = "postgres";
/// The database role and database the adapter uses.
pub const DATABASE: &str = "postgres";
/// How often expired holds are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Most holds one sweep returns.
pub const SWEEP_BATCH_MAX: u64 = 1_000;
/// Longest one operation (a whole transaction) may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server has to accept connections after it starts.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// How often a starting server is tried.
pub const START_POLL: Duration = Duration::from_millis(100);
/// Connections beyond the pools (sweeper, setup, reconcile).
pub const SPARE_CONNECTIONS: usize = 10;
/// SKU rows inserted per statement at setup.
pub const STOCK_INSERT_BATCH: usize = 500;

/// SQLSTATEs after which the transaction is simply retried.
const RETRY_SQLSTATES: [SqlState; 2] = [
    SqlState::T_R_DEADLOCK_DETECTED,
    SqlState::T_R_SERIALIZATION_FAILURE,
];

// The statements, prepared once per connection.
const INSERT_HOLD: &str =
    "INSERT INTO holds (id, lines, expires_at_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
const TAKE_STOCK: &str =
    "UPDATE stock SET available = available - $2, held = held + $2 WHERE sku = $1 AND available >= $2";
const TAKE_LIVE_HOLD: &str = "DELETE FROM holds WHERE id = $1 AND expires_at_ms > $2 RETURNING lines";
const TAKE_ANY_HOLD: &str = "DELETE FROM holds WHERE id = $1 RETURNING lines";
const IS_CONFIRMED: &str = "SELECT 1 FROM confirmed WHERE id = $1";
const IS_HELD: &str = "SELECT 1 FROM holds WHERE id = $1";
const SELL: &str = "UPDATE stock SET held = held - $2, sold = sold + $2 WHERE sku = $1";
const MARK_CONFIRMED: &str = "INSERT INTO confirmed (id) VALUES ($1)";
const RETURN_STOCK: &str = "UPDATE stock SET held = held - $2, available = available + $2 WHERE sku = $1";
const TAKE_EXPIRED_HOLDS: &str = "DELETE FROM holds WHERE id IN (SELECT id FROM holds WHERE expires_at_ms <= $1 \
     ORDER BY expires_at_ms LIMIT $2) RETURNING lines";
const INSERT_STOCK: &str = "INSERT INTO stock (sku, stocked, available, held, sold) \
     SELECT sku, n, n, 0, 0 FROM unnest($1::text[], $2::bigint[]) AS t (sku, n)";

const SCHEMA: &str = "
CREATE TABLE stock (
  sku text PRIMARY KEY,
  stocked bigint NOT NULL,
  available bigint NOT NULL CHECK (available >= 0),
  held bigint NOT NULL CHECK (held >= 0),
  sold bigint NOT NULL
);
CREATE TABLE holds (id text PRIMARY KEY, lines text NOT NULL, expires_at_ms bigint NOT NULL);
CREATE INDEX holds_expiry ON holds (expires_at_ms);
CREATE TABLE confirmed (id text PRIMARY KEY);
";

fn now_ms() -> i64 {
    // A clock before 1970 is a broken machine; 0 only makes holds expire late.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Units as a `bigint`; quantities are far below its limit (a larger one
/// saturates, and then no stock row has that much).
fn units(q: u64) -> i64 {
    i64::try_from(q).unwrap_or(i64::MAX)
}

/// A `bigint` of the books as units (the schema keeps them non-negative).
fn from_units(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// `sku=q,sku=q` as stored in `holds.lines`.
fn encode_lines(lines: &[(String, u64)]) -> String {
    lines
        .iter()
        .map(|(s, q)| format!("{s}={q}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn decode_lines(text: &str) -> Vec<(String, u64)> {
    text.split(',')
        .filter_map(|kv| {
            let (s, q) = kv.split_once('=')?;
            Some((s.to_string(), q.parse().ok()?))
        })
        .collect()
}

/// A bounded pool of connections (at most [`POOL_SIZE_MAX`]), made on
/// demand.
type Pool = deadpool_postgres::Pool;

/// The adapter.
pub struct PostgresTarget {
    addr: String,
    config: Config,
    pools: Vec<Pool>,
    maintenance: Pool,
    server: tokio::sync::Mutex<Option<ServerProcess>>,
    sweeper: std::sync::Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

impl PostgresTarget {
    /// Initialises and starts a server, creates the schema, and sets up
    /// `regions` pools of `pool_size` connections.
    pub async fn start(regions: usize, pool_size: usize) -> Result<Arc<PostgresTarget>, TargetError> {
        let bin = postgres_bin_dir().ok_or_else(|| {
            TargetError::Absent(
                "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and PATH; \
                 apt-get install postgresql); the postgres target needs them"
                    .into(),
            )
        })?;
        let run_as = if is_root() {
            Some(user_ids(SERVER_USER).ok_or_else(|| {
                TargetError::Absent(format!(
                    "running as root, PostgreSQL needs the unprivileged user {SERVER_USER:?}, which does not exist"
                ))
            })?)
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("reservoir-loadtest-pg-")
            .tempdir()
            .map_err(|e| TargetError::Setup(format!("temporary folder for postgres: {e}")))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).map_err(|e| {
                TargetError::Setup(format!("handing {} to {SERVER_USER}: {e}", dir.path().display()))
            })?;
        }
        let data = dir.path().join("data");
        let as_server_user = |program: &Path| {
            let mut cmd = Command::new(program);
            cmd.current_dir(dir.path()).env_remove("PGDATA");
            if let Some((uid, gid)) = run_as {
                use std::os::unix::process::CommandExt;
                cmd.uid(uid).gid(gid).env("HOME", dir.path());
            }
            cmd
        };
        let mut initdb = as_server_user(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            DATABASE,
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let initdb_log = dir.path().join("initdb.log");
        let initdb_run =
            tokio::task::spawn_blocking(move || run_to_completion(initdb, "initdb", &initdb_log));
        initdb_run
            .await
            .map_err(|e| TargetError::Setup(format!("initdb: {e}")))?
            .map_err(TargetError::Setup)?;

        let port = free_port().map_err(|e| TargetError::Setup(format!("free port: {e}")))?;
        let pool_size = pool_size.clamp(1, POOL_SIZE_MAX);
        let max_connections = regions * pool_size + SPARE_CONNECTIONS;
        let mut postgres = as_server_user(&bin.join("postgres"));
        postgres
            .arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "synchronous_commit=on",
                "-c",
                "fsync=on",
                "-c",
                "log_min_messages=warning",
            ])
            .arg("-c")
            .arg(format!("max_connections={max_connections}"));
        let log = dir.path().join("postgres.log");
        let mut server = ServerProcess::spawn(postgres, "postgres", log, Some(dir))
            .map_err(|e| TargetError::Setup(format!("starting postgres: {e}")))?;
        let addr = format!("127.0.0.1:{port}");
        let mut config = Config::new();
        config
            .host("127.0.0.1")
            .port(port)
            .user(DATABASE)
            .dbname(DATABASE)
            .connect_timeout(OP_TIMEOUT);
        let deadline = tokio::time::Instant::now() + START_DEADLINE;
        let conn = loop {
            if !server.running() {
                return Err(TargetError::Setup(format!(
                    "postgres exited at start:\n{}",
                    server.log_tail()
                )));
            }
            match connect(&config).await {
                Ok(c) => break c,
                Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(START_POLL).await,
                Err(e) => {
                    return Err(TargetError::Setup(format!(
                        "postgres did not accept connections within {START_DEADLINE:?}: {e}\n{}",
                        server.log_tail()
                    )));
                }
            }
        };
        bounded("creating the schema", conn.batch_execute(SCHEMA)).await?;
        drop(conn);
        let pools = (0..regions)
            .map(|_| pool(&config, pool_size))
            .collect::<Result<Vec<_>, _>>()?;
        let target = Arc::new(PostgresTarget {
            addr,
            maintenance: pool(&config, 1)?,
            config,
            pools,
            server: tokio::sync::Mutex::new(Some(server)),
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

    /// Runs one transaction function on a pooled connection, with the
    /// operation timeout, mapping errors to [`OpError`]s. A transaction
    /// the function did not finish is rolled back when it is dropped
    /// (tokio-postgres sends the `ROLLBACK`); a connection that broke or
    /// timed out leaves the pool.
    async fn run<T>(
        &self,
        pool: &Pool,
        tx: impl AsyncFnOnce(&mut ClientWrapper) -> Result<Result<T, OpError>, tokio_postgres::Error>,
    ) -> Result<T, OpError> {
        let mut client = pool.get().await.map_err(pool_error)?;
        match tokio::time::timeout(OP_TIMEOUT, tx(&mut *client)).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => match e.as_db_error() {
                Some(db) => {
                    let (code, message) = (db.code(), db.message());
                    if RETRY_SQLSTATES.contains(code) {
                        Err(OpError::retryable(
                            reason::UNAVAILABLE,
                            format!("{}: {message}", code.code()),
                        ))
                    } else {
                        Err(OpError::fatal(
                            reason::SERVER_ERROR,
                            format!("{}: {message}", code.code()),
                        ))
                    }
                }
                None => {
                    drop(Object::take(client));
                    Err(OpError::retryable(reason::UNAVAILABLE, format!("postgres: {e}")))
                }
            },
            Err(_) => {
                drop(Object::take(client));
                Err(OpError::retryable(
                    reason::TIMEOUT,
                    "postgres transaction timed out",
                ))
            }
        }
    }

    fn pool(&self, region: usize) -> Result<&Pool, OpError> {
        self.pools
            .get(region)
            .ok_or_else(|| OpError::fatal(reason::SERVER_ERROR, format!("no region {region}")))
    }

    /// Adds every catalog SKU's stock.
    pub async fn stock(&self, catalog: &Catalog) -> Result<(), TargetError> {
        let client = connect(&self.config).await?;
        let insert = bounded("preparing the stock insert", client.prepare(INSERT_STOCK)).await?;
        for chunk in catalog.skus.chunks(STOCK_INSERT_BATCH) {
            let skus: Vec<&str> = chunk.iter().map(|s| s.sku.as_str()).collect();
            let stock: Vec<i64> = chunk.iter().map(|s| units(s.stock)).collect();
            bounded("stocking", client.execute(&insert, &[&skus, &stock])).await?;
        }
        Ok(())
    }

    /// Reserve: one transaction; all lines or none; the hold id is the
    /// request id.
    pub async fn reserve(
        &self,
        region: usize,
        request_id: &str,
        lines: &[(String, u64)],
        ttl_ms: u64,
    ) -> Result<String, OpError> {
        let mut sorted = lines.to_vec();
        sorted.sort();
        let encoded = encode_lines(&sorted);
        let expires_at_ms = now_ms().saturating_add(units(ttl_ms));
        self.run(self.pool(region)?, async |c: &mut ClientWrapper| {
            let tx = c.transaction().await?;
            let insert = tx.prepare_cached(INSERT_HOLD).await?;
            if tx
                .execute(&insert, &[&request_id, &encoded, &expires_at_ms])
                .await?
                == 0
            {
                // A retry of a reserve that already took its units.
                tx.rollback().await?;
                return Ok(Ok(request_id.to_string()));
            }
            let take = tx.prepare_cached(TAKE_STOCK).await?;
            for (i, (sku, q)) in sorted.iter().enumerate() {
                if tx.execute(&take, &[sku, &units(*q)]).await? == 0 {
                    tx.rollback().await?;
                    return Ok(Err(OpError::fatal(
                        reason::INSUFFICIENT_STOCK,
                        format!("line {} ({sku}) short", i + 1),
                    )));
                }
            }
            tx.commit().await?;
            Ok(Ok(request_id.to_string()))
        })
        .await
    }

    /// Takes a hold out of `holds` (only if unexpired when `live_only`) in
    /// transaction `tx`, returning its lines, or `None`.
    async fn take_hold(
        tx: &deadpool_postgres::Transaction<'_>,
        id: &str,
        live_only: bool,
    ) -> Result<Option<Vec<(String, u64)>>, tokio_postgres::Error> {
        let row = if live_only {
            let take = tx.prepare_cached(TAKE_LIVE_HOLD).await?;
            tx.query_opt(&take, &[&id, &now_ms()]).await?
        } else {
            let take = tx.prepare_cached(TAKE_ANY_HOLD).await?;
            tx.query_opt(&take, &[&id]).await?
        };
        match row {
            Some(row) => Ok(Some(decode_lines(row.try_get::<_, &str>(0)?))),
            None => Ok(None),
        }
    }

    /// Confirm a hold (idempotent: a confirmed id answers OK again).
    pub async fn confirm(&self, region: usize, id: &str) -> Result<(), OpError> {
        self.run(self.pool(region)?, async |c: &mut ClientWrapper| {
            let tx = c.transaction().await?;
            let Some(lines) = Self::take_hold(&tx, id, true).await? else {
                tx.rollback().await?;
                let is_confirmed = c.prepare_cached(IS_CONFIRMED).await?;
                if c.query_opt(&is_confirmed, &[&id]).await?.is_some() {
                    return Ok(Ok(()));
                }
                let is_held = c.prepare_cached(IS_HELD).await?;
                let reason = if c.query_opt(&is_held, &[&id]).await?.is_none() {
                    reason::RESERVATION_NOT_FOUND
                } else {
                    reason::RESERVATION_EXPIRED
                };
                return Ok(Err(OpError::fatal(reason, id)));
            };
            let sell = tx.prepare_cached(SELL).await?;
            for (sku, q) in &lines {
                tx.execute(&sell, &[sku, &units(*q)]).await?;
            }
            let mark = tx.prepare_cached(MARK_CONFIRMED).await?;
            tx.execute(&mark, &[&id]).await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await
    }

    /// Release a hold (idempotent: a gone hold answers OK).
    pub async fn release(&self, region: usize, id: &str) -> Result<(), OpError> {
        self.run(self.pool(region)?, async |c: &mut ClientWrapper| {
            let tx = c.transaction().await?;
            let Some(lines) = Self::take_hold(&tx, id, false).await? else {
                tx.rollback().await?;
                return Ok(Ok(()));
            };
            let give_back = tx.prepare_cached(RETURN_STOCK).await?;
            for (sku, q) in &lines {
                tx.execute(&give_back, &[sku, &units(*q)]).await?;
            }
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await
    }

    /// Returns up to [`SWEEP_BATCH_MAX`] expired holds' units; how many holds.
    async fn sweep(&self) -> Result<u64, OpError> {
        self.run(&self.maintenance, async |c: &mut ClientWrapper| {
            let tx = c.transaction().await?;
            let take = tx.prepare_cached(TAKE_EXPIRED_HOLDS).await?;
            let rows = tx.query(&take, &[&now_ms(), &units(SWEEP_BATCH_MAX)]).await?;
            if rows.is_empty() {
                tx.rollback().await?;
                return Ok(Ok(0));
            }
            let mut by_sku: BTreeMap<String, u64> = BTreeMap::new();
            for row in &rows {
                for (sku, q) in decode_lines(row.try_get::<_, &str>(0)?) {
                    *by_sku.entry(sku).or_insert(0) += q;
                }
            }
            // In SKU order, as every transaction locks stock rows.
            let give_back = tx.prepare_cached(RETURN_STOCK).await?;
            for (sku, q) in &by_sku {
                tx.execute(&give_back, &[sku, &units(*q)]).await?;
            }
            tx.commit().await?;
            Ok(Ok(rows.len() as u64))
        })
        .await
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
        let client = connect(&self.config).await?;
        let count = async |c: &Client| -> Result<u64, TargetError> {
            let row = bounded("counting holds", c.query_one("SELECT count(*) FROM holds", &[])).await?;
            let n: i64 = row
                .try_get(0)
                .map_err(|e| TargetError::Setup(format!("counting holds: {e}")))?;
            Ok(from_units(n))
        };
        let mut live = count(&client).await?;
        while wait_for_holds && live > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(SWEEP_INTERVAL).await;
            let _ = self.sweep().await;
            live = count(&client).await?;
        }
        let rows = bounded(
            "reading stock",
            client.query(
                "SELECT sku, stocked, available, held, sold FROM stock ORDER BY sku",
                &[],
            ),
        )
        .await?;
        drop(client);
        let mut by_sku = BTreeMap::new();
        for row in rows {
            let read = || -> Result<(String, [u64; 4]), tokio_postgres::Error> {
                let num = |i: usize| row.try_get::<_, i64>(i).map(from_units);
                Ok((row.try_get(0)?, [num(1)?, num(2)?, num(3)?, num(4)?]))
            };
            let (sku, [stocked, available, held, sold]) =
                read().map_err(|e| TargetError::Setup(format!("reading stock: {e}")))?;
            by_sku.insert(
                sku,
                ServerSku {
                    stocked,
                    available,
                    held,
                    sold,
                    settled: sold,
                    stranded: 0,
                },
            );
        }
        Ok(ServerView::of_baseline(
            catalog,
            by_sku,
            live,
            wait_for_holds,
            Vec::new(),
            started.elapsed().as_secs_f64(),
        ))
    }

    /// Stops the sweeper and the server (fast shutdown: SIGINT).
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
            server.stop(libc::SIGINT).await;
        }
    }
}

/// A connection of its own (setup, reading the books), its connection task
/// spawned; it closes when the client is dropped.
async fn connect(config: &Config) -> Result<Client, TargetError> {
    let (client, connection) = bounded("connecting to postgres", config.connect(NoTls)).await?;
    tokio::spawn(async move {
        // Its error, if any, shows in the next query on the client.
        let _ = connection.await;
    });
    Ok(client)
}

/// `what` within [`OP_TIMEOUT`].
async fn bounded<T>(
    what: &str,
    call: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, TargetError> {
    match tokio::time::timeout(OP_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(TargetError::Setup(format!("{what}: {e}"))),
        Err(_) => Err(TargetError::Setup(format!(
            "{what}: no answer within {OP_TIMEOUT:?}"
        ))),
    }
}

/// A pool of `size` connections.
fn pool(config: &Config, size: usize) -> Result<Pool, TargetError> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.clamp(1, POOL_SIZE_MAX))
        .create_timeout(Some(OP_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| TargetError::Setup(format!("postgres connection pool: {e}")))
}

/// Why no connection could be had.
fn pool_error(e: PoolError) -> OpError {
    match e {
        PoolError::Timeout(_) => OpError::retryable(reason::TIMEOUT, "connecting to postgres timed out"),
        PoolError::Backend(e) => {
            OpError::retryable(reason::UNAVAILABLE, format!("connecting to postgres: {e}"))
        }
        other => OpError::retryable(reason::UNAVAILABLE, format!("postgres connection pool: {other}")),
    }
}

async fn sweep_loop(target: Arc<PostgresTarget>, mut stop_rx: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop_rx.changed() => return,
            _ = tick.tick() => {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Hold lines survive the text encoding.
    #[test]
    fn lines_round_trip() {
        let lines = vec![("a-1".to_string(), 2), ("b-2".to_string(), 1)];
        assert_eq!(decode_lines(&encode_lines(&lines)), lines);
        assert!(decode_lines("").is_empty());
    }
}
