//! Backup and restore: a backup taken with `reservoir backup` (of a
//! standalone region, and of the three-region cluster while its rebalancer
//! moves tokens and its reconciler settles sales) restores with `reservoir
//! restore` into a fresh cluster's empty data directories: every
//! acknowledged reservation is found there as its shopper last saw it, and
//! the audit balances (in the cluster, with every sale settled, and the
//! settled total equal to the confirmed units).

use std::collections::BTreeMap;
use std::path::Path;

use reservoir_tests::{
    Cluster, ClusterOptions, HOME_REGION, REGIONS, Record, SETTLE_DEADLINE, Shopper, ShopperOptions,
    assert_balanced, balanced_sheets, is_confirmed, one_at_a_time, resolve, seen, units, verify_records,
};

/// The SKUs shoppers reserve.
const SKUS: [&str; 2] = ["bk-a", "bk-b"];
/// Reserves each shopper makes before the backup.
const RESERVES: usize = 30;

/// Shoppers of `regions` make [`RESERVES`] reserves each (every fourth
/// confirmed, the next released) and stop; returns every acknowledged one.
async fn shop(cluster: &Cluster, name: &str, regions: &[&str]) -> Vec<Record> {
    let shoppers: Vec<Shopper> = regions
        .iter()
        .enumerate()
        .map(|(i, region)| {
            let mut options = ShopperOptions::new(format!("{name}{i}"), region, &SKUS);
            options.reserves_max = RESERVES;
            options.max_wait_ms = 2_000;
            Shopper::start(cluster, i, options)
        })
        .collect();
    let mut logs = Vec::new();
    for shopper in shoppers {
        logs.push(shopper.join().await);
    }
    let records = resolve(cluster, logs).await;
    assert!(
        records.len() >= regions.len() * RESERVES / 2,
        "{} records",
        records.len()
    );
    records
}

/// `reservoir backup --out FILE`: asserts it succeeded.
async fn backup(cluster: &Cluster, file: &Path) {
    let out = cluster
        .operator(&["backup", "--out", &file.display().to_string()])
        .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = cluster
        .operator(&["backup", "--out", &file.display().to_string()])
        .await;
    assert!(!again.status.success(), "a backup overwrote {}", file.display());
}

/// A fresh cluster started as `options` say, stopped, every node's data
/// deleted and restored from `file`, and started again.
async fn restored(options: ClusterOptions, file: &Path) -> Cluster {
    let mut fresh = Cluster::start(options).await;
    fresh.stop(libc::SIGTERM).await;
    for id in fresh.ids() {
        fresh.wipe_data(id);
        let config = fresh.config_path(id).display().to_string();
        let out = fresh
            .reservoir(&[
                "restore",
                "--backup",
                &file.display().to_string(),
                "--config",
                &config,
            ])
            .await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // A second restore onto the seeded directory is refused.
        let again = fresh
            .reservoir(&[
                "restore",
                "--backup",
                &file.display().to_string(),
                "--config",
                &config,
            ])
            .await;
        assert!(!again.status.success(), "a restore over data succeeded");
    }
    fresh.start_again().await;
    fresh
}

/// A standalone region's backup restores into a fresh region: every
/// acknowledged reservation is there, the buckets are the same, the audit
/// balances, and the restored region takes new reserves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_restored_from_its_backup_has_every_acknowledged_hold() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("region.backup");
    let (buckets, records) = {
        let region = Cluster::start(ClusterOptions::standalone()).await;
        for sku in SKUS {
            region.add_stock(sku, 1_000).await;
        }
        let records = shop(&region, "bk", &[HOME_REGION]).await;
        backup(&region, &file).await;
        (region.converged_in(HOME_REGION).await.buckets, records)
    };
    let fresh = restored(ClusterOptions::standalone(), &file).await;
    for record in &records {
        let id = &record.reservation.reservation_id;
        let found = fresh
            .get(HOME_REGION, id)
            .await
            .unwrap_or_else(|s| panic!("{id} not restored: {s:?}"));
        assert_eq!(seen(&found), record.seen, "{id}");
        assert_eq!(found.lines, record.reservation.lines, "{id}");
    }
    let after = fresh.converged_in(HOME_REGION).await;
    assert_eq!(after.buckets, buckets, "the restored buckets differ");
    let report = fresh.audit().await;
    assert!(report.balanced, "{report:?}");
    balanced_sheets(&report);
    // New request ids: one made before the backup answers its reservation.
    let more = shop(&fresh, "after", &[HOME_REGION]).await;
    assert!(!more.is_empty());
    let report = fresh.audit().await;
    assert!(report.balanced, "{report:?}");
    balanced_sheets(&report);
}

/// The three-region cluster's backup, taken while tokens move and sales
/// settle, restores into a fresh cluster: every acknowledged reservation
/// is found, settlement finishes, the audit balances with zero drift, and
/// the settled units equal the confirmed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_its_backup_balances_and_settles() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("cluster.backup");
    let (records, stocked) = {
        let cluster = Cluster::start(ClusterOptions::default()).await;
        let mut stocked = BTreeMap::new();
        for sku in SKUS {
            cluster.add_stock(sku, 600).await;
            stocked.insert(sku, 600u64);
        }
        let records = shop(&cluster, "bk", &REGIONS).await;
        // More stock arrives while the backup is taken: grants in flight.
        for sku in SKUS {
            cluster.add_stock(sku, 50).await;
            *stocked.get_mut(sku).expect("stocked") += 50;
        }
        backup(&cluster, &file).await;
        (records, stocked)
    };
    let fresh = restored(ClusterOptions::default(), &file).await;
    verify_records(&fresh, &records).await;
    let report = fresh.settled_audit(SETTLE_DEADLINE).await;
    assert_balanced(&report);
    for sku in SKUS {
        let sheet = report
            .skus
            .iter()
            .find(|s| s.sku == sku)
            .unwrap_or_else(|| panic!("{sku} in the audit"));
        assert_eq!(sheet.stocked_total, stocked[sku], "{sku} stocked");
        assert_eq!(
            sheet.settled_total,
            units(&records, None, sku, is_confirmed),
            "{sku}: settled units differ from the confirmed ones"
        );
    }
}
