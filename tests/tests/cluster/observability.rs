//! Operating a node as a load balancer, a probe, an operator and Prometheus
//! see it: gRPC health (asked without a key) follows `/readyz` (that it
//! needs no key, and reflection, are node/tests/security.rs's), SIGTERM
//! turns a node not ready and keeps it serving for `drain_ms` before it
//! stops, `[log] format = "json"` writes
//! JSON lines whose call spans name the request and the leader a call was
//! forwarded to, `[metrics] sku_labels` bounds the per-SKU series; and
//! every metric the Grafana dashboard and the Prometheus rules in `deploy/`
//! name exists on a real three-region cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reservoir_proto::v1::inventory_client::InventoryClient;
use reservoir_tests::{
    Cluster, ClusterOptions, Credentials, HOME_REGION, LEADER_DEADLINE, POLL_INTERVAL, REGIONS, UpNode,
    balanced_sheets, channel, http_get, line, one_at_a_time, reserve, reserve_request,
};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The names gRPC health answers for: the server, and each client-plane service.
const HEALTH_NAMES: [&str; 3] = ["", "reservoir.v1.Inventory", "reservoir.v1.Admin"];
/// How long the watched node drains after SIGTERM.
const DRAIN_MS: u64 = 4_000;
/// How long health may take to follow readiness (it is checked every
/// 250 ms; an election or a lost quorum takes a few seconds to notice).
const HEALTH_DEADLINE: Duration = Duration::from_secs(20);

/// gRPC health follows readiness both ways (a node alone, without a quorum,
/// says NOT_SERVING on every name while `/readyz` says 503, and SERVING again
/// once its peers are back), the JSON log
/// and the SKU bound are as configured, and a SIGTERM drains: not ready on
/// both at once, still serving calls, stopped after `drain_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_readiness_and_a_stop_drains_first() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut region = Cluster::start(ClusterOptions::standalone()).await;
    let leader = region.region_leader(HOME_REGION).await;
    let ids = region.ids();
    for &id in &ids {
        wait_health(&region, id, ServingStatus::Serving).await;
    }

    // The watched node, a follower, restarted with a drain, JSON logs that
    // show refused calls, and one SKU of its own in the metrics.
    let watched = ids.iter().copied().find(|&id| id != leader).expect("a follower");
    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != watched).collect();
    region.kill(watched).await;
    let config = region.dir().join(format!("node-{watched}.toml"));
    operations_config(&config);
    region.restart(watched).await;
    wait_health(&region, watched, ServingStatus::Serving).await;

    // Alone, it cannot commit: not ready on both; back with its peers, ready.
    for &id in &others {
        region.kill(id).await;
    }
    wait_health(&region, watched, ServingStatus::NotServing).await;
    let (code, text) = readyz(&region, watched).await;
    assert_eq!(code, 503, "/readyz agrees with gRPC health: {text}");
    for &id in &others {
        region.restart(id).await;
    }
    wait_health(&region, watched, ServingStatus::Serving).await;
    assert_eq!(readyz(&region, watched).await.0, 200);

    // The SKU bound: one SKU of its own, the other summed into (other).
    region.add_stock("obs-a", 100).await;
    region.add_stock("obs-b", 100).await;
    let skus = wait_sku_series(&region, watched).await;
    assert_eq!(skus.len(), 2, "one SKU of its own and (other): {skus:?}");
    assert!(skus.contains("(other)"), "{skus:?}");

    // A refused call on a follower, forwarded to the leader: its line names
    // the request and the leader it went to.
    let leader = region.region_leader(HOME_REGION).await;
    let refused = InventoryClient::new(region.channel(watched))
        .reserve(reserve_request("obs-too-many", vec![line("obs-a", 1_000)]))
        .await;
    assert!(refused.is_err(), "1,000 of 100 units: {refused:?}");

    // SIGTERM: not ready on both at once, calls still served, then a stop.
    let signalled = Instant::now();
    region.terminate(watched);
    wait_health(&region, watched, ServingStatus::NotServing).await;
    let (code, text) = readyz(&region, watched).await;
    assert_eq!((code, text.trim()), (503, "not ready: draining"));
    let during = reserve(
        &reservoir_tests::Rotation::new(vec![region.channel(watched)], 0),
        &reserve_request("obs-during-drain", vec![line("obs-a", 1)]),
        Duration::from_millis(DRAIN_MS / 2),
    )
    .await;
    let during = during.result.expect("a draining node still serves calls");
    assert!(
        signalled.elapsed() < Duration::from_millis(DRAIN_MS),
        "the reserve was answered during the drain, not after it"
    );
    let status = region.wait_stopped(watched).await;
    let stopped_after = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "a drained node exits 0: {status:?}"
    );
    assert!(
        stopped_after >= Duration::from_millis(DRAIN_MS),
        "stopped {stopped_after:?} after SIGTERM, before drain_ms {DRAIN_MS}"
    );

    // Its log, in JSON: the drain, the lost quorum, the forwarded refusal.
    let lines = json_lines(&region.dir().join(format!("node-{watched}.log")));
    let find = |what: &str, pick: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .find(|l| pick(l))
            .unwrap_or_else(|| panic!("no JSON line {what} in node {watched}'s log: {lines:#?}"))
            .clone()
    };
    let drain = find("for the drain", &|l| {
        l["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("draining"))
    });
    assert_eq!(drain["level"], "INFO", "{drain}");
    assert_eq!(drain["fields"]["drain_ms"], DRAIN_MS, "{drain}");
    assert!(
        drain["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{drain}"
    );
    let lost = find("for the lost quorum", &|l| {
        l["level"] == "WARN"
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("not ready"))
    });
    assert!(lost["fields"]["reason"].is_string(), "{lost}");
    let refusal = find("for the refused reserve", &|l| {
        l["span"]["request_id"] == "obs-too-many" && l["fields"]["message"] == "call refused"
    });
    assert_eq!(refusal["span"]["method"], "reserve", "{refusal}");
    assert_eq!(refusal["span"]["plane"], "client", "{refusal}");
    assert_eq!(refusal["fields"]["outcome"], "INSUFFICIENT_STOCK", "{refusal}");
    if leader != watched {
        assert_eq!(
            refusal["span"]["leader"].as_str(),
            Some(
                region
                    .node(leader)
                    .peer
                    .as_ref()
                    .expect("a peer address")
                    .to_string()
                    .as_str()
            ),
            "the forwarding hop: {refusal}"
        );
    }

    region.restart(watched).await;
    let held = region.get(HOME_REGION, &during.reservation_id).await;
    assert!(held.is_ok(), "the reserve made during the drain holds: {held:?}");
    let sheets = balanced_sheets(&region.audit().await);
    assert_eq!(
        (sheets["obs-a"].stocked, sheets["obs-a"].held),
        (100, 1),
        "only the reserve made during the drain holds: {sheets:?}"
    );
    eprintln!("test took {:?}", started.elapsed());
}

/// Every metric the Grafana dashboard's queries and the Prometheus rules
/// name is exported by the nodes of a three-region cluster (one node per
/// region) after a little traffic; the Raft series carry `group` (the
/// ledger's too), commands per entry have their own buckets, the build is
/// labelled, every metric has a `# HELP` line. With `promtool` on the PATH
/// (Debian's `prometheus` package) the scrape config and the rules are
/// checked with it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_rule_metric_exists_on_a_cluster() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let dashboard_path = deploy.join("grafana/reservoir-dashboard.json");
    let rules_path = deploy.join("prometheus/reservoir-rules.yml");
    let dashboard: serde_json::Value = serde_json::from_str(&read(&dashboard_path))
        .unwrap_or_else(|e| panic!("{}: {e}", dashboard_path.display()));
    let mut queries = Vec::new();
    collect_queries(&dashboard, true, &mut queries);
    assert!(queries.len() > 20, "the dashboard's queries: {queries:?}");
    let mut wanted: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    wanted.extend(metric_names(&read(&rules_path)));
    assert!(wanted.len() > 30, "metrics named: {wanted:?}");
    promtool_checks(&deploy);

    let cluster = Cluster::start(ClusterOptions::default()).await;
    cluster.ledger_leader().await;
    // Traffic: stock reaches every region, a sale in each, settled.
    cluster.add_stock("obs-sku", 300).await;
    cluster
        .wait_available("obs-sku", Duration::from_secs(30), "some in every region", |a| {
            a.iter().all(|&n| n > 0)
        })
        .await;
    for region in REGIONS {
        let nodes = cluster.rotation_in(region, 0);
        let held = reserve(
            &nodes,
            &reserve_request(format!("obs-{region}"), vec![line("obs-sku", 1)]),
            Duration::from_secs(15),
        )
        .await
        .result
        .unwrap_or_else(|e| panic!("a reserve in {region}: {e:?}"));
        reservoir_tests::confirm(
            &nodes,
            &held.reservation_id,
            &format!("o-{region}"),
            Duration::from_secs(15),
        )
        .await
        .result
        .unwrap_or_else(|e| panic!("a confirm in {region}: {e:?}"));
    }
    cluster.settled_audit(Duration::from_secs(30)).await;

    // Every name, on some node, within a few rounds and audits.
    let give_up = Instant::now() + Duration::from_secs(30);
    let texts = loop {
        let mut texts = Vec::new();
        for id in cluster.ids() {
            let (code, text) = http_get(cluster.node(id).http(), "/metrics")
                .await
                .unwrap_or_else(|e| panic!("node {id}'s /metrics: {e:?}"));
            assert_eq!(code, 200, "node {id}'s /metrics");
            texts.push((id, text));
        }
        let exported: BTreeSet<String> = texts.iter().flat_map(|(_, t)| exported_names(t)).collect();
        let missing: Vec<&String> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
        if missing.is_empty() {
            break texts;
        }
        assert!(
            Instant::now() < give_up,
            "metrics the dashboard or the rules name that no node exports: {missing:?}"
        );
        tokio::time::sleep(POLL_INTERVAL * 10).await;
    };

    let home = cluster.ids_in(HOME_REGION)[0];
    let home_text = &texts.iter().find(|(id, _)| *id == home).expect("a home node").1;
    for series in [
        "reservoir_raft_term{group=\"ledger\"}",
        "reservoir_raft_is_leader{group=\"us-east\"}",
        "reservoir_proposal_queue_depth{group=\"ledger\"}",
    ] {
        assert!(home_text.contains(series), "{series} on node {home}");
    }
    let batch_buckets: Vec<&str> = home_text
        .lines()
        .filter(|l| l.starts_with("reservoir_raft_batch_commands_bucket{"))
        .collect();
    assert!(
        batch_buckets.iter().any(|l| l.contains("le=\"512\"")),
        "commands per entry up to 512: {batch_buckets:?}"
    );
    assert!(
        !batch_buckets.iter().any(|l| l.contains("le=\"0.0001\"")),
        "commands per entry are not timed in seconds: {batch_buckets:?}"
    );
    assert!(
        batch_buckets.iter().all(|l| l.contains("group=\"")),
        "{batch_buckets:?}"
    );
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        home_text
            .lines()
            .any(|l| l.starts_with("reservoir_build_info{") && l.contains(&version) && l.ends_with(" 1")),
        "reservoir_build_info with {version}"
    );
    for (id, text) in &texts {
        let undescribed = undescribed(text);
        assert!(
            undescribed.is_empty(),
            "node {id} exports metrics without # HELP: {undescribed:?}"
        );
    }
    eprintln!("test took {:?}", started.elapsed());
}

/// Rewrites a node's config for operations: a drain of [`DRAIN_MS`], JSON
/// logs that include refused calls, and one SKU with series of its own.
fn operations_config(path: &Path) {
    let mut config: toml::Table =
        toml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    config.insert("drain_ms".into(), toml::Value::Integer(DRAIN_MS as i64));
    let log: toml::Table = toml::from_str(
        "format = \"json\"\nfilter = \"info,openraft=warn,sled=warn,reservoir_node::server::service=debug\"\n",
    )
    .expect("a [log] table");
    config.insert("log".into(), toml::Value::Table(log));
    let metrics: toml::Table = toml::from_str("sku_labels = 1\n").expect("a [metrics] table");
    config.insert("metrics".into(), toml::Value::Table(metrics));
    let text = toml::to_string(&config).expect("a config serializes");
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Polls one node's gRPC health, asked without a key, until every name of
/// [`HEALTH_NAMES`] answers `wanted`, on both listeners that serve it: the
/// client listener (TLS) and the HTTP listener (cleartext HTTP/2, for
/// Kubernetes' `grpc` probes).
async fn wait_health(cluster: &Cluster, id: u64, wanted: ServingStatus) {
    let file = cluster.file();
    let ca = file
        .tls
        .as_ref()
        .map(|tls| cluster.dir().join(&tls.ca_file))
        .expect("a secure cluster names its CA");
    let credentials = Credentials::new(Some(&ca), None).expect("the cluster's CA");
    let plaintext = Credentials::new(None, None).expect("no credentials");
    let node = cluster.node(id);
    let mut clients = [
        ("client", HealthClient::new(channel(&credentials, &node.grpc))),
        ("http", HealthClient::new(channel(&plaintext, &node.http()))),
    ];
    let give_up = Instant::now() + HEALTH_DEADLINE;
    loop {
        let mut seen = Vec::new();
        for (listener, client) in &mut clients {
            for name in HEALTH_NAMES {
                let answer = client
                    .check(HealthCheckRequest {
                        service: name.to_string(),
                    })
                    .await
                    .map(|r| ServingStatus::try_from(r.into_inner().status));
                seen.push(((*listener, name), answer));
            }
        }
        if seen
            .iter()
            .all(|(_, answer)| matches!(answer, Ok(Ok(status)) if *status == wanted))
        {
            return;
        }
        assert!(
            Instant::now() < give_up,
            "node {id}'s gRPC health is not {wanted:?} after {HEALTH_DEADLINE:?}: {seen:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// One node's `/readyz`: status code and body.
async fn readyz(cluster: &Cluster, id: u64) -> (u16, String) {
    http_get(cluster.node(id).http(), "/readyz")
        .await
        .unwrap_or_else(|e| panic!("node {id}'s /readyz: {e:?}"))
}

/// Polls one node's `/metrics` until both stocked SKUs are counted, and
/// returns the `sku` labels of its `reservoir_bucket_tokens` series.
async fn wait_sku_series(cluster: &Cluster, id: u64) -> BTreeSet<String> {
    let give_up = Instant::now() + LEADER_DEADLINE;
    loop {
        let (_, text) = http_get(cluster.node(id).http(), "/metrics")
            .await
            .unwrap_or_else(|e| panic!("node {id}'s /metrics: {e:?}"));
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("reservoir_bucket_tokens{") && l.contains("kind=\"available\""))
            .collect();
        let available: f64 = series
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if available >= 200.0 {
            return series
                .iter()
                .filter_map(|l| {
                    let start = l.find("sku=\"")? + 5;
                    let end = start + l[start..].find('"')?;
                    Some(l[start..end].to_string())
                })
                .collect();
        }
        assert!(
            Instant::now() < give_up,
            "node {id} does not count both SKUs' 200 units: {series:?}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The JSON objects among a log's lines (a restarted node appends to the
/// text lines of its earlier runs).
fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    read(path)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a JSON log line: {e}: {l}")))
        .collect()
}

/// Every query of a Grafana dashboard: its panels' PromQL (`expr`), and
/// with `templates` its variables' queries too (`label_values(...)`:
/// Grafana's, not PromQL).
fn collect_queries(value: &serde_json::Value, templates: bool, into: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(q)) => into.push(q.clone()),
                    ("definition", serde_json::Value::String(q)) if templates => into.push(q.clone()),
                    _ => collect_queries(v, templates, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_queries(v, templates, into)),
        _ => {}
    }
}

/// The Reservoir metric names in a query or a rules file: identifiers that
/// start with `reservoir_` (a recording rule's name, `level:metric:op`,
/// does not).
fn metric_names(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("reservoir_"))
        .map(str::to_string)
        .collect()
}

/// The names of every sample line of a `/metrics` text (a histogram's
/// `_bucket`, `_sum` and `_count` included).
fn exported_names(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The metric families of a `/metrics` text (`# TYPE`) that have no
/// `# HELP` line.
fn undescribed(text: &str) -> Vec<String> {
    let described: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next())
        .collect();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .filter(|name| !described.contains(name))
        .map(str::to_string)
        .collect()
}

/// With `promtool` installed: `check config` on the scrape config (which
/// loads the rules) and `check rules` on every dashboard query made a
/// recording rule. Without it, says so and checks nothing.
fn promtool_checks(deploy: &Path) {
    let promtool = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<PathBuf>>())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    let Some(promtool) = promtool else {
        eprintln!("promtool not installed: the scrape config and the queries are not parsed");
        return;
    };
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "check".as_ref(),
        "config".as_ref(),
        deploy.join("prometheus/prometheus.yml").as_os_str(),
    ]);
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&deploy.join("grafana/reservoir-dashboard.json"))).expect("JSON");
    let mut queries = Vec::new();
    collect_queries(&dashboard, false, &mut queries);
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let q = q.replace("$__rate_interval", "1m").replace("$region", ".*");
        rules += &format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::Value::String(q)
        );
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).expect("rules written");
    run(&["check".as_ref(), "rules".as_ref(), file.as_os_str()]);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
