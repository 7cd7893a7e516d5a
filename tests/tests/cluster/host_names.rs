//! A standalone region whose nodes know each other, and are known to
//! clients, only by host name: `up --standalone --advertise-host localhost`
//! makes every node listen on `0.0.0.0` and advertise `localhost:PORT`, name
//! its peers `localhost:PORT`, and carry a certificate for `localhost`. Raft,
//! forwarding and the clients' TLS all go through the name; a killed leader's
//! successor is elected and reconnected to by name, and the books balance.

use std::collections::BTreeSet;
use std::time::Instant;

use reservoir_proto::v1;
use reservoir_tests::{
    Cluster, ClusterOptions, HOME_REGION, RETRY_DEADLINE, UpNode, balanced_sheets, line, one_at_a_time,
    reserve, reserve_request, units_of,
};

/// The SKU reserved, and its stock.
const SKU: &str = "named-sku";
const STOCK: u64 = 500;
/// Reserves sent through each node before and after the leader is killed.
const RESERVES_PER_NODE: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_reached_by_host_name_commits_and_balances() {
    let _serial = one_at_a_time().await;
    let started = Instant::now();
    let mut region = Cluster::start(ClusterOptions {
        advertise_host: Some("localhost"),
        ..ClusterOptions::standalone()
    })
    .await;

    // What the nodes were told: listen everywhere, be reached by name.
    for id in region.ids() {
        let config = std::fs::read_to_string(region.dir().join(format!("node-{id}.toml"))).unwrap();
        for expected in [
            "grpc_addr = \"0.0.0.0:",
            "peer_addr = \"0.0.0.0:",
            "grpc_advertise = \"localhost:",
            "peer_advertise = \"localhost:",
        ] {
            assert!(
                config.contains(expected),
                "node {id} lacks {expected:?}:\n{config}"
            );
        }
        assert!(
            !config.contains("peer = \"127.0.0.1:"),
            "node {id} names a peer by IP:\n{config}"
        );
        let node = region.node(id);
        assert_eq!(node.grpc.host_str(), "localhost", "cluster.json: {node:?}");
        assert_eq!(node.http().host_str(), "localhost", "cluster.json: {node:?}");
    }

    region.add_stock(SKU, STOCK as i64).await;
    let mut acknowledged: Vec<v1::Reservation> = Vec::new();
    let mut send_through_every_node = async |region: &Cluster, round: &str| {
        let ids = region.live_ids();
        for (i, id) in region.ids().into_iter().enumerate() {
            if !ids.contains(&id) {
                continue;
            }
            // A rotation that starts at this node: a follower forwards the
            // reserve to the leader at the leader's advertised name.
            let nodes = region.rotation(i);
            for k in 0..RESERVES_PER_NODE {
                let request = reserve_request(format!("{round}-{id}-{k}"), vec![line(SKU, 2)]);
                let answer = reserve(&nodes, &request, RETRY_DEADLINE).await;
                let reservation = answer
                    .result
                    .unwrap_or_else(|s| panic!("reserve {round}-{id}-{k}: {s:?}"));
                acknowledged.push(reservation);
            }
        }
    };
    send_through_every_node(&region, "first").await;

    // The leader dies; the others elect a new one over their named links,
    // and the old leader, restarted, rejoins through its peers' names.
    let leader = region.region_leader(HOME_REGION).await;
    region.kill(leader).await;
    send_through_every_node(&region, "without-leader").await;
    region.restart(leader).await;
    let new_leader = region.region_leader(HOME_REGION).await;
    send_through_every_node(&region, "after-restart").await;
    let converged = region.converged_in(HOME_REGION).await;

    let ids: BTreeSet<&str> = acknowledged.iter().map(|r| r.reservation_id.as_str()).collect();
    assert_eq!(ids.len(), acknowledged.len(), "a reservation id answered twice");
    for r in &acknowledged {
        let read = region
            .get(HOME_REGION, &r.reservation_id)
            .await
            .unwrap_or_else(|s| panic!("acknowledged {} not found: {s:?}", r.reservation_id));
        assert_eq!(&read, r);
    }
    let held: u64 = acknowledged.iter().map(|r| units_of(&r.lines, SKU)).sum();
    let sheets = balanced_sheets(&region.audit().await);
    assert_eq!(sheets[SKU].held, held, "held units = acknowledged units");
    assert_eq!(sheets[SKU].available, STOCK - held);
    eprintln!(
        "test took {:?}: {} reserves, leader {leader} killed, {new_leader} leads, applied index {:?}",
        started.elapsed(),
        acknowledged.len(),
        converged.applied_index
    );
}
