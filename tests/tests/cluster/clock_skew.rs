//! A real node with a wrong wall clock leads a standalone region: its clock
//! is skewed with libfaketime (an hour ahead, an hour behind, the year
//! 2100; its monotonic clock is left alone). Holds made before it leads
//! are not expired early, a retried request id finds its reservation, and
//! holds it makes expire when their TTL says. Needs the `faketime` package
//! (`.ci/run` installs it).

use std::path::Path;
use std::time::{Duration, Instant};

use reservoir_proto::v1;
use reservoir_tests::{
    Cluster, ClusterOptions, HOME_REGION, POLL_INTERVAL, UpNode, balanced_sheets, http_get, line,
    one_at_a_time, reserve_request,
};

/// libfaketime, as Debian's `faketime` package installs it.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// The node whose clock is skewed: the smallest id has the shortest election
/// timeout, so it wins the election after a leader is killed.
const SKEWED: u64 = 1;
/// Most leader kills to make the skewed node the leader.
const ELECTIONS_MAX: usize = 8;
/// A hold made before the skewed node leads: longer than the checks take.
const LONG_TTL_MS: u64 = 60_000;
/// A hold made under the skewed leader, to watch expire.
const SHORT_TTL_MS: u64 = 3_000;
/// How late the short hold may expire: the bound on a leader's lead, the
/// expiry sweep's tick and slack for a loaded machine.
const EXPIRY_SLACK: Duration = Duration::from_secs(6);

/// Holds expire when their TTL says and no retry reserves twice, whoever leads, whatever its wall clock says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_a_wrong_clock_keeps_time() {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: install Debian's faketime package (.ci/run does)"
    );
    let _serial = one_at_a_time().await;
    let mut region = Cluster::start(ClusterOptions::standalone()).await;
    region.add_stock("sku", 100).await;
    for (name, faketime) in [
        ("an hour ahead", "+1h"),
        ("an hour behind", "-1h"),
        ("in 2100", "@2100-01-01 00:00:00"),
    ] {
        eprintln!("--- the leader's clock {name} ---");
        // A hold made under a right clock.
        let mut client = region.inventory(region.region_leader(HOME_REGION).await);
        let mut request = reserve_request(format!("long-{faketime}"), vec![line("sku", 1)]);
        request.ttl_ms = LONG_TTL_MS;
        let long = client
            .reserve(request.clone())
            .await
            .expect("reserve under a right clock")
            .into_inner()
            .reservation
            .expect("a reservation");

        // The skewed node comes back with the wrong clock and takes the lead.
        region.kill(SKEWED).await;
        let env = [
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME", faketime),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ];
        region.restart_with_env(SKEWED, &env).await;
        lead_with(&mut region, SKEWED).await;
        let mut client = region.inventory(SKEWED);

        // Its expiry sweeps run every 100 ms: give them time to do harm.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let seen = get(&mut client, &long.reservation_id).await;
        assert_eq!(seen.state, v1::ReservationState::Held as i32, "{name}: {seen:?}");
        let again = client
            .reserve(request)
            .await
            .expect("the retry is answered")
            .into_inner()
            .reservation
            .expect("a reservation");
        assert_eq!(
            again.reservation_id, long.reservation_id,
            "{name}: the retry reserved twice"
        );

        // A hold it makes expires when its TTL says.
        let mut request = reserve_request(format!("short-{faketime}"), vec![line("sku", 1)]);
        request.ttl_ms = SHORT_TTL_MS;
        let made = Instant::now();
        let short = client
            .reserve(request)
            .await
            .expect("reserve under the skewed leader")
            .into_inner()
            .reservation
            .expect("a reservation");
        let give_up = made + Duration::from_millis(SHORT_TTL_MS) + EXPIRY_SLACK;
        loop {
            let seen = get(&mut client, &short.reservation_id).await;
            if seen.state == v1::ReservationState::Expired as i32 {
                assert!(
                    made.elapsed() >= Duration::from_millis(SHORT_TTL_MS - 1_000),
                    "{name}: a {SHORT_TTL_MS} ms hold expired after {:?}",
                    made.elapsed()
                );
                eprintln!(
                    "{name}: a {SHORT_TTL_MS} ms hold expired after {:?}",
                    made.elapsed()
                );
                break;
            }
            assert!(
                Instant::now() < give_up,
                "{name}: a {SHORT_TTL_MS} ms hold not expired: {seen:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }

        // The node says its clock is off.
        let (_, metrics) = http_get(region.node(SKEWED).http(), "/metrics")
            .await
            .expect("/metrics");
        assert!(
            metrics.contains("reservoir_clock_skew_warnings_total"),
            "{name}: no skew warning counted"
        );
        let release = v1::ReleaseRequest {
            reservation_id: long.reservation_id.clone(),
        };
        client.release(release).await.expect("release");
    }
    let sheets = balanced_sheets(&region.audit().await);
    assert_eq!(sheets["sku"].held, 0, "{:?}", sheets["sku"]);
}

/// Kills the region's leader until `id` leads (it has the shortest
/// election timeout), restarting each killed node.
async fn lead_with(region: &mut Cluster, id: u64) {
    for _ in 0..ELECTIONS_MAX {
        let leader = region.region_leader(HOME_REGION).await;
        if leader == id {
            return;
        }
        region.kill(leader).await;
        let give_up = Instant::now() + Duration::from_secs(20);
        while region.status(id).await.ok().and_then(|s| s.leader) != Some(id) {
            if Instant::now() > give_up {
                break;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        region.restart(leader).await;
    }
    panic!("node {id} did not become the leader in {ELECTIONS_MAX} elections");
}

async fn get(
    client: &mut v1::inventory_client::InventoryClient<reservoir_tests::ClientChannel>,
    id: &str,
) -> v1::Reservation {
    let request = v1::GetReservationRequest {
        reservation_id: id.to_string(),
    };
    client.get_reservation(request).await.expect("read").into_inner()
}
