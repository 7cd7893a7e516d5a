//! One whole run as the binary (and the tests) do it: connect or start the
//! target, run the scenario, stop what was started, build the report, write
//! `report.json` and `report.html`.

use std::path::{Path, PathBuf};

use tokio::sync::watch;

use crate::html;
use crate::report::Report;
use crate::runner::{self, RunOptions};
use crate::scenario::Scenario;
use crate::target::POOL_SIZE_MAX;
use crate::target::postgres::PostgresTarget;
use crate::target::redis::{Persistence, RedisTarget};
use crate::target::reservoir::{CallOptions, ClusterFile, ReservoirTarget, newest_cluster_file};
use crate::target::{Target, TargetError, TargetKind};

/// Connections per region to a baseline server when not given.
pub const CONNECTIONS_PER_REGION_DEFAULT: usize = 16;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Bad options or scenario; exit code 2.
    #[error("{0}")]
    Usage(String),
    /// The target's server binary is not installed; exit code 3.
    #[error("{0}")]
    Absent(String),
    /// The target could not be started, stocked or read; exit code 1.
    #[error("{0}")]
    Target(String),
    /// Writing the report failed; exit code 1.
    #[error("{what}: {source}")]
    Io {
        /// What was being written.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl LoadError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            LoadError::Usage(_) => 2,
            LoadError::Absent(_) => 3,
            LoadError::Target(_) | LoadError::Io { .. } => 1,
        }
    }
}

impl From<TargetError> for LoadError {
    fn from(e: TargetError) -> LoadError {
        match e {
            TargetError::Absent(m) => LoadError::Absent(m),
            TargetError::Setup(m) => LoadError::Target(m),
        }
    }
}

/// Everything one run needs.
pub struct AppOptions {
    /// The scenario, overrides applied.
    pub scenario: Scenario,
    /// Which target.
    pub target: TargetKind,
    /// `cluster.json` for Reservoir; `None` means the newest
    /// `target/reservoir-up-*/cluster.json`.
    pub cluster: Option<PathBuf>,
    /// Seed of every random draw.
    pub seed: u64,
    /// Connections per region to a baseline server.
    pub connections_per_region: usize,
    /// How Reservoir's nodes are called (spread, batched).
    pub calls: CallOptions,
    /// Print a progress line per second.
    pub progress: bool,
    /// Stops the load early when it turns true.
    pub stop_rx: Option<watch::Receiver<bool>>,
    /// Read every acknowledged reservation back after the run (Reservoir).
    pub check_acknowledged: bool,
}

/// Runs the scenario against the target and returns the report. Servers the
/// run started are stopped before this returns, also when it fails.
pub async fn run(options: AppOptions) -> Result<Report, LoadError> {
    options.scenario.validate().map_err(LoadError::Usage)?;
    let regions = options.scenario.regions.len();
    let connections = options.connections_per_region.clamp(1, POOL_SIZE_MAX);
    let mut target_name = options.target.name().to_string();
    let target = match options.target {
        TargetKind::Reservoir => {
            let path = match options.cluster {
                Some(p) => p,
                None => newest_cluster_file().ok_or_else(|| {
                    LoadError::Usage(
                        "no --cluster given and no target/reservoir-up-*/cluster.json found; \
                         start a cluster with `reservoir up` first"
                            .into(),
                    )
                })?,
            };
            if options.progress {
                eprintln!("cluster: {}", path.display());
            }
            let file = ClusterFile::load(&path).map_err(crate::target::TargetError::from)?;
            let target =
                ReservoirTarget::connect(&file, &path, &options.scenario.regions, options.calls).await?;
            if let Some(a) = target.architecture() {
                target_name = format!("reservoir ({a})");
            }
            let label = options.calls.label();
            if !label.is_empty() {
                target_name = format!("{target_name}, {label}");
            }
            Target::Reservoir(std::sync::Arc::new(target))
        }
        TargetKind::Redis => {
            Target::Redis(RedisTarget::start(Persistence::Durable, regions, connections).await?)
        }
        TargetKind::RedisNopersist => {
            Target::Redis(RedisTarget::start(Persistence::None, regions, connections).await?)
        }
        TargetKind::Postgres => Target::Postgres(PostgresTarget::start(regions, connections).await?),
    };
    let result = runner::run(RunOptions {
        scenario: options.scenario,
        target: target.clone(),
        target_name,
        seed: options.seed,
        progress: options.progress,
        stop_rx: options.stop_rx,
        check_acknowledged: options.check_acknowledged,
    })
    .await;
    target.shutdown().await;
    let output = result?;
    Ok(Report::build(&output))
}

/// Writes `report.json` and `report.html` into `dir` (created); returns
/// their paths.
pub fn write_outputs(report: &Report, dir: &Path) -> Result<(PathBuf, PathBuf), LoadError> {
    let io = |what: String| move |source| LoadError::Io { what, source };
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let json_path = dir.join("report.json");
    let json = report
        .to_json()
        .map_err(|e| LoadError::Target(format!("serialising the report: {e}")))?;
    std::fs::write(&json_path, json + "\n").map_err(io(format!("writing {}", json_path.display())))?;
    let html_path = dir.join("report.html");
    std::fs::write(&html_path, html::render(report))
        .map_err(io(format!("writing {}", html_path.display())))?;
    Ok((json_path, html_path))
}
