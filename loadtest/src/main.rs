//! `reservoir-loadtest`: open-loop Black Friday load against Reservoir or a
//! baseline, with a terminal summary, `report.json` and `report.html`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Parser;
use reservoir_loadtest::app::{self, AppOptions, CONNECTIONS_PER_REGION_DEFAULT, LoadError};
use reservoir_loadtest::scenario::{BuiltIn, Scenario};
use reservoir_loadtest::target::TargetKind;
use reservoir_loadtest::target::reservoir::{CallOptions, RESERVE_BATCH_MAX};

/// mimalloc, as in the node: a closed loop at tens of thousands of
/// reserves a second makes many small, short-lived allocations per reserve
/// (sessions, requests, histogram records), and the load tester shares the
/// machine's cores with what it measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Largest scenario file read.
const SCENARIO_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Open-loop load (Poisson arrivals, latency from the intended send time)
/// for Reservoir and its baselines.
#[derive(Debug, Parser)]
#[command(name = "reservoir-loadtest", version)]
struct Args {
    /// A built-in scenario (or give --scenario-file).
    #[arg(value_enum, required_unless_present = "scenario_file")]
    scenario: Option<BuiltIn>,
    /// A scenario as TOML (see --print-scenario for the fields).
    #[arg(long, conflicts_with = "scenario")]
    scenario_file: Option<PathBuf>,
    /// What to load.
    #[arg(long, value_enum, default_value = "reservoir")]
    target: TargetKind,
    /// Reservoir's cluster.json (default: the newest target/reservoir-up-*/cluster.json).
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Length of the load in seconds; the scenario's windows scale with it.
    #[arg(long)]
    duration_s: Option<f64>,
    /// Baseline reserve arrivals per second in each region.
    #[arg(long)]
    rate: Option<f64>,
    /// Most requests in flight per region.
    #[arg(long)]
    inflight_max: Option<usize>,
    /// Closed-loop clients per region, each sending its next request when the
    /// last is answered (0: the scenario's open loop of arrivals).
    #[arg(long)]
    clients: Option<usize>,
    /// Hold time of every reserve, in milliseconds (up to 14400000, 4 hours).
    #[arg(long)]
    hold_ttl_ms: Option<u64>,
    /// Read the books as soon as the sessions end, without waiting for live
    /// holds to expire (they are reported; the audit must still balance).
    #[arg(long)]
    no_wait_for_holds: bool,
    /// Reservoir only: send each call to the region's nodes in turn (followers
    /// forward to the leader) instead of to the leader.
    #[arg(long)]
    spread: bool,
    /// Reservoir only: start each region's calls at a follower (not the
    /// leader) and follow the leader it names in its answers.
    #[arg(long)]
    start_at_follower: bool,
    /// Reservoir only: gather the reserves waiting at one moment into
    /// ReserveBatch calls of up to N (2-256), as an aggregating checkout
    /// service would; give many --clients to fill them.
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// Connections per region to a Redis or PostgreSQL server.
    #[arg(long, default_value_t = CONNECTIONS_PER_REGION_DEFAULT)]
    connections: usize,
    /// Folder for report.json and report.html (default: target/loadtest-SCENARIO-TARGET-UNIXTIME).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the arrival times and carts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the scenario as TOML and exit.
    #[arg(long)]
    print_scenario: bool,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// Reservoir only: after the run, read every acknowledged reservation
    /// back and check its state fits what the session did (a confirm
    /// answered OK is confirmed or settled, ...); any lost or in the wrong
    /// state fails the run. Up to 2,000,000 are filed.
    #[arg(long)]
    check_acknowledged: bool,
}

fn scenario(args: &Args) -> Result<Scenario, LoadError> {
    let mut scenario = match (&args.scenario, &args.scenario_file) {
        (Some(which), _) => Scenario::built_in(*which),
        (None, Some(path)) => {
            let size = std::fs::metadata(path)
                .map_err(|e| LoadError::Usage(format!("{}: {e}", path.display())))?
                .len();
            if size > SCENARIO_FILE_BYTES_MAX {
                return Err(LoadError::Usage(format!(
                    "{} is over {SCENARIO_FILE_BYTES_MAX} bytes",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| LoadError::Usage(format!("{}: {e}", path.display())))?;
            Scenario::from_toml(&text).map_err(|e| LoadError::Usage(format!("{}: {e}", path.display())))?
        }
        (None, None) => return Err(LoadError::Usage("give a scenario or --scenario-file".into())),
    };
    if let Some(d) = args.duration_s {
        scenario.duration_s = d;
    }
    if let Some(r) = args.rate {
        scenario.rate_per_region = r;
    }
    if let Some(n) = args.inflight_max {
        scenario.inflight_max = n;
    }
    if let Some(n) = args.clients {
        // Each closed-loop client keeps one request in flight.
        scenario.clients_per_region = n;
        scenario.inflight_max = scenario.inflight_max.max(n);
    }
    if let Some(ms) = args.hold_ttl_ms {
        scenario.sessions.hold_ttl_ms = ms;
    }
    if args.no_wait_for_holds {
        scenario.reconcile_wait_for_holds = false;
    }
    scenario.validate().map_err(LoadError::Usage)?;
    Ok(scenario)
}

/// How Reservoir's nodes are called, from `--spread`, `--start-at-follower`
/// and `--batch`.
fn calls(args: &Args) -> Result<CallOptions, LoadError> {
    if (args.spread || args.start_at_follower || args.batch.is_some()) && args.target != TargetKind::Reservoir
    {
        return Err(LoadError::Usage(
            "--spread, --start-at-follower and --batch apply to --target reservoir only".into(),
        ));
    }
    if args.spread && (args.start_at_follower || args.batch.is_some()) {
        return Err(LoadError::Usage(
            "--spread excludes --start-at-follower and --batch (a batch goes to the current node)".into(),
        ));
    }
    if let Some(n) = args.batch
        && !(2..=RESERVE_BATCH_MAX).contains(&n)
    {
        return Err(LoadError::Usage(format!(
            "--batch must be 2-{RESERVE_BATCH_MAX}, got {n}"
        )));
    }
    Ok(CallOptions {
        spread: args.spread,
        start_at_follower: args.start_at_follower,
        batch_max: args.batch.unwrap_or(0),
    })
}

async fn main_inner(args: Args) -> Result<bool, LoadError> {
    let scenario = scenario(&args)?;
    let calls = calls(&args)?;
    if args.print_scenario {
        print!("{}", scenario.to_toml().map_err(LoadError::Usage)?);
        return Ok(true);
    }
    let out = args.out.clone().unwrap_or_else(|| {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from("target").join(format!(
            "loadtest-{}-{}-{stamp}",
            scenario.name,
            args.target.name()
        ))
    });
    // The first Ctrl-C ends the load early (drain, heal, reconcile and
    // stopping servers still run); a second one exits at once.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("Ctrl-C: ending the load early (again to quit at once)");
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    eprintln!(
        "{} against {}: {} s, {}/s per region baseline, seed {}",
        scenario.name,
        args.target.name(),
        scenario.duration_s,
        scenario.rate_per_region,
        args.seed
    );
    let report = app::run(AppOptions {
        scenario,
        target: args.target,
        cluster: args.cluster,
        seed: args.seed,
        connections_per_region: args.connections,
        calls,
        progress: !args.quiet,
        stop_rx: Some(stop_rx),
        check_acknowledged: args.check_acknowledged,
    })
    .await?;
    print!("{}", report.summary());
    let (json, html) = app::write_outputs(&report, &out)?;
    println!("wrote {} and {}", json.display(), html.display());
    let t = &report.totals;
    Ok(t.oversell_units == 0
        && t.audit_balanced
        && t.failed_not_retryable.is_empty()
        && t.acknowledged.as_ref().is_none_or(|a| a.clean()))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match main_inner(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!(
                "FAILED: oversell, unbalanced books, a request failed that a retry would not change, \
                 or an acknowledged reservation lost (see above)"
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
