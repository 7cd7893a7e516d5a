//! The operator commands on a standalone region (secure, as `up` makes it)
//! while shoppers reserve, confirm and release: bad requests are refused
//! with their reasons and change nothing; leadership moves to the node
//! asked for; a snapshot is built on demand; a follower whose disk died is
//! replaced by a new node under a new id with an empty data directory (it
//! catches up by snapshot, the old id leaves, the new one votes and then
//! leads); a node is added and removed. Afterwards every acknowledged
//! reservation is found as its shopper last saw it and the audit balances.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reservoir_proto::v1;
use reservoir_proto::v1::admin_client::AdminClient;
use reservoir_tests::{
    Cluster, ClusterOptions, HOME_REGION, POLL_INTERVAL, Shopper, ShopperOptions, balanced_sheets,
    one_at_a_time, refusal, resolve, seen,
};
use tonic::Code;

/// The SKUs the shoppers reserve.
const SKUS: [&str; 2] = ["op-a", "op-b"];
/// Units stocked of each: more than the load takes.
const STOCK: i64 = 100_000;
/// Concurrent shoppers.
const SHOPPERS: usize = 2;
/// Acknowledged reserves to wait for between steps, so each runs under load.
const ACKS_PER_STEP: u64 = 10;
/// Log entries between two snapshots of a node.
const SNAPSHOT_LOGS: u64 = 50;
/// Log entries kept behind a snapshot.
const SNAPSHOT_LOGS_KEPT: u64 = 10;
/// How long the load may take to make them.
const ACKS_DEADLINE: Duration = Duration::from_secs(30);

/// Waits until the shoppers have made `more` acknowledged reserves.
async fn more_acks(shoppers: &[Shopper], more: u64) {
    let acks = || shoppers.iter().map(|s| s.progress.acks()).sum::<u64>();
    let target = acks() + more;
    let give_up = Instant::now() + ACKS_DEADLINE;
    while acks() < target {
        assert!(Instant::now() < give_up, "the load stalled at {} acks", acks());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The group's membership as its leader sees it.
async fn membership(region: &Cluster, via: u64) -> v1::Membership {
    region
        .admin(via)
        .get_membership(v1::GetMembershipRequest::default())
        .await
        .expect("membership")
        .into_inner()
}

fn voters(view: &v1::Membership) -> BTreeSet<u64> {
    view.members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.id)
        .collect()
}

/// Asserts the command failed with `reason` on its error line.
fn failed_with(output: &std::process::Output, reason: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "expected {reason}, got success");
    assert!(stderr.contains(reason), "expected {reason}: {stderr}");
}

fn succeeded(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Operator commands under load: refusals, transfer, snapshot, replace a
/// dead node by a new id, add and remove a node; nothing acknowledged lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_under_load_lose_nothing() {
    let _serial = one_at_a_time().await;
    let mut region = Cluster::start(ClusterOptions::standalone()).await;
    // Snapshots often and little log kept behind them, so a new node can
    // only catch up by snapshot: written into the configs `up` made (and
    // copied into the new nodes'), then `up` runs again on them.
    region.stop(libc::SIGTERM).await;
    for id in region.ids() {
        let path = region.config_path(id);
        let text = std::fs::read_to_string(&path).expect("a node config");
        let tuned = text
            .replace(
                "snapshot_logs = 100000\n",
                &format!("snapshot_logs = {SNAPSHOT_LOGS}\n"),
            )
            .replace(
                "snapshot_logs_kept = 1000\n",
                &format!("snapshot_logs_kept = {SNAPSHOT_LOGS_KEPT}\n"),
            );
        assert_ne!(tuned, text, "node {id}'s config has the snapshot settings");
        std::fs::write(&path, tuned).expect("config written");
    }
    region.start_again().await;
    for sku in SKUS {
        region.add_stock(sku, STOCK).await;
    }
    let shoppers: Vec<Shopper> = (0..SHOPPERS)
        .map(|i| {
            let mut options = ShopperOptions::new(format!("op{i}"), HOME_REGION, &SKUS);
            options.reserves_max = 100_000;
            options.run_max = Duration::from_secs(240);
            Shopper::start(&region, i, options)
        })
        .collect();
    more_acks(&shoppers, ACKS_PER_STEP).await;

    // Bad requests: refused with their reasons, nothing changed.
    let before = membership(&region, 1).await;
    assert_eq!(voters(&before), [1, 2, 3].into());
    let mut admin = region.admin(1);
    let change = |add: Vec<u64>, remove: Vec<u64>| v1::ChangeVotersRequest {
        group: String::new(),
        add,
        remove,
    };
    let no = |(code, reason): (Code, Option<String>)| (code, reason.unwrap_or_default());
    assert_eq!(
        no(refusal(admin.change_voters(change(vec![], vec![9])).await)),
        (Code::NotFound, "UNKNOWN_NODE".into())
    );
    assert_eq!(
        no(refusal(admin.change_voters(change(vec![], vec![1, 2, 3])).await)),
        (Code::FailedPrecondition, "LAST_VOTER".into())
    );
    assert_eq!(
        no(refusal(admin.change_voters(change(vec![], vec![])).await)),
        (Code::InvalidArgument, "INVALID_MEMBERSHIP_REQUEST".into())
    );
    let transfer = |to: u64| v1::TransferLeaderRequest {
        group: String::new(),
        to,
    };
    assert_eq!(
        no(refusal(admin.transfer_leader(transfer(9)).await)),
        (Code::NotFound, "UNKNOWN_NODE".into())
    );
    assert_eq!(
        no(refusal(
            admin
                .get_membership(v1::GetMembershipRequest {
                    group: "ledger".into()
                })
                .await
        )),
        (Code::FailedPrecondition, "GROUP_NOT_HOSTED".into())
    );
    let mut shop = AdminClient::new(region.channel(1));
    let learner = v1::AddLearnerRequest {
        group: String::new(),
        node_id: 7,
        address: "127.0.0.1:1".into(),
    };
    assert_eq!(
        no(refusal(shop.add_learner(learner).await)),
        (Code::PermissionDenied, "ROLE_NOT_ALLOWED".into())
    );
    failed_with(
        &region.operator(&["remove-node", "--id", "9"]).await,
        "UNKNOWN_NODE",
    );
    failed_with(
        &region
            .operator(&["transfer-leader", "--to", "9", "--role", "shop"])
            .await,
        "ROLE_NOT_ALLOWED",
    );
    let after = membership(&region, 1).await;
    assert_eq!(voters(&after), voters(&before), "a refusal changed the voters");
    assert!(after.members.iter().all(|m| m.id != 7));

    // Leadership moves to the follower asked for.
    let leader = region.region_leader(HOME_REGION).await;
    let target = [1, 2, 3]
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    let out = succeeded(
        &region
            .operator(&["transfer-leader", "--to", &target.to_string()])
            .await,
    );
    assert!(out.contains(&format!("node {target} leads")), "{out}");
    assert_eq!(region.region_leader(HOME_REGION).await, target);
    more_acks(&shoppers, ACKS_PER_STEP).await;

    // A snapshot on demand, on a follower.
    let follower = [1, 2, 3]
        .into_iter()
        .find(|&id| id != target)
        .expect("a follower");
    let node = region.node(follower).grpc.to_string();
    let out = succeeded(&region.operator(&["snapshot", "--addr", &node]).await);
    assert!(
        out.contains(&format!("node {follower} built a snapshot")),
        "{out}"
    );
    let status = region.status(follower).await.expect("status");
    assert!(status.snapshot_index.is_some(), "{status:?}");

    // A follower's disk dies: node 4, new and empty, replaces it.
    let dead = [1, 2, 3]
        .into_iter()
        .find(|&id| id != target && id != follower)
        .expect("the third node");
    region.kill(dead).await;
    region.wipe_data(dead);
    more_acks(&shoppers, ACKS_PER_STEP).await;
    let address = region.start_new_node(target, 4).await;
    let out = succeeded(
        &region
            .operator(&[
                "replace-node",
                "--old",
                &dead.to_string(),
                "--id",
                "4",
                "--address",
                &address,
            ])
            .await,
    );
    assert!(out.contains(&format!("node {dead} replaced by node 4")), "{out}");
    let view = membership(&region, target).await;
    assert_eq!(voters(&view), [target, follower, 4].into());
    assert!(view.members.iter().all(|m| m.id != dead), "{view:?}");
    // Running it again finds the work done.
    let again = succeeded(
        &region
            .operator(&[
                "replace-node",
                "--old",
                &dead.to_string(),
                "--id",
                "4",
                "--address",
                &address,
            ])
            .await,
    );
    assert!(again.contains("already replaced"), "{again}");
    // The new node votes and leads (its peers take its messages though no
    // config names it).
    let out = succeeded(&region.operator(&["transfer-leader", "--to", "4"]).await);
    assert!(out.contains("node 4 leads"), "{out}");
    more_acks(&shoppers, ACKS_PER_STEP).await;
    let status = region.status(4).await.expect("node 4's status");
    assert!(
        status.snapshots.as_ref().is_some_and(|s| s.installed >= 1),
        "node 4 took no snapshot: {status:?}"
    );

    // Add node 5, then remove it, under load.
    let address = region.start_new_node(4, 5).await;
    let out = succeeded(
        &region
            .operator(&["add-node", "--id", "5", "--address", &address])
            .await,
    );
    assert!(out.contains("node 5 is a voter"), "{out}");
    assert_eq!(
        voters(&membership(&region, 4).await),
        [target, follower, 4, 5].into()
    );
    more_acks(&shoppers, ACKS_PER_STEP).await;
    let out = succeeded(&region.operator(&["remove-node", "--id", "5"]).await);
    assert!(out.contains("node 5 removed"), "{out}");
    assert_eq!(
        voters(&membership(&region, 4).await),
        [target, follower, 4].into()
    );
    let out = succeeded(&region.operator(&["membership"]).await);
    assert!(out.contains("voter (leader)"), "{out}");

    // Nothing acknowledged was lost, and the books balance.
    let mut logs = Vec::new();
    for shopper in shoppers {
        logs.push(shopper.finish().await);
    }
    let records = resolve(&region, logs).await;
    assert!(
        records.len() as u64 >= 5 * ACKS_PER_STEP,
        "{} records",
        records.len()
    );
    for record in &records {
        let id = &record.reservation.reservation_id;
        let found = region
            .get(HOME_REGION, id)
            .await
            .unwrap_or_else(|s| panic!("acknowledged reservation {id} not found: {s:?}"));
        assert_eq!(seen(&found), record.seen, "{id}");
        assert_eq!(found.lines, record.reservation.lines, "{id}");
    }
    let report = region.audit().await;
    assert!(report.balanced, "{report:?}");
    balanced_sheets(&report);
}
