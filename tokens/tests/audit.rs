//! The conservation audit (docs/architecture.md, "The one invariant") over
//! a ledger and three regions: it balances at every intermediate step of
//! every flow, and it reports corrupted states and missing regions.

use reservoir_tokens::audit::{self, BalanceSheet, SkuBalance};
use reservoir_tokens::{
    LedgerApplied, LedgerCommand, LedgerOp, LedgerState, Line, Millis, RegionApplied, RegionCommand,
    RegionOp, RegionState, ReservationId, ReservationState, SettleEntry, TransferId, Units,
};

const T0: Millis = 1_700_000_000_000;
const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// The owner of every reservation here.
const OWNER: &str = "shop";

/// A ledger and three regions, driven step by step like the rebalancer and
/// the reconciler would, with a clock that ticks once per command.
struct Cluster {
    ledger: LedgerState,
    regions: Vec<RegionState>,
    now_ms: Millis,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            ledger: LedgerState::new(),
            regions: REGIONS.iter().map(|r| RegionState::new(*r)).collect(),
            now_ms: T0,
        }
    }

    fn tick(&mut self) -> Millis {
        self.now_ms += 1;
        self.now_ms
    }

    fn sheet(&self) -> BalanceSheet {
        let refs: Vec<&RegionState> = self.regions.iter().collect();
        audit::balance(&self.ledger, &refs)
    }

    /// The audit balances, and so do the ledger's and every bucket's books.
    fn check(&self, step: &str) -> BalanceSheet {
        let sheet = self.sheet();
        assert!(sheet.balanced(), "after {step}: {sheet:#?}");
        assert_eq!(sheet.total_drift(), 0, "after {step}");
        assert!(sheet.missing_regions.is_empty(), "after {step}");
        for (sku, d) in self.ledger.books_drift() {
            assert_eq!(d, 0, "after {step}: ledger books of {sku}");
        }
        for r in &self.regions {
            for (sku, b) in r.buckets() {
                assert_eq!(b.books_drift(), 0, "after {step}: {} bucket {sku}", r.region());
            }
        }
        sheet
    }

    fn ledger(&mut self, op: LedgerOp) -> LedgerApplied {
        let now_ms = self.tick();
        let desc = format!("{op:?}");
        let out = self
            .ledger
            .apply(LedgerCommand { now_ms, op })
            .unwrap_or_else(|e| panic!("ledger {desc}: {e}"));
        self.check(&format!("ledger {desc}"));
        out
    }

    fn region(&mut self, i: usize, op: RegionOp) -> RegionApplied {
        let now_ms = self.tick();
        let desc = format!("{} {op:?}", REGIONS[i]);
        let out = self.regions[i]
            .apply(RegionCommand { now_ms, op })
            .unwrap_or_else(|e| panic!("{desc}: {e}"));
        self.check(&desc);
        out
    }

    fn stock(&mut self, sku: &str, delta: i64) {
        let request_id = format!("stock-{}", self.now_ms);
        self.ledger(LedgerOp::AdjustStock {
            request_id,
            sku: sku.into(),
            delta,
        });
    }

    /// A grant in its three steps, audited between each; returns its id.
    fn grant(&mut self, i: usize, sku: &str, units: Units) -> TransferId {
        let region = REGIONS[i];
        let LedgerApplied::Begun(t) = self.ledger(LedgerOp::BeginGrant {
            region: region.into(),
            sku: sku.into(),
            units,
        }) else {
            panic!("BeginGrant did not begin");
        };
        let sheet = self.check("begin grant");
        assert!(sku_of(&sheet, sku).in_flight_grants >= units, "{sheet:#?}");
        let done_below = self.ledger.done_below(region);
        self.region(
            i,
            RegionOp::Grant {
                transfer_id: t.id,
                sku: sku.into(),
                units,
                done_below,
            },
        );
        self.ledger(LedgerOp::CompleteGrant { transfer_id: t.id });
        t.id
    }

    /// A revoke in its three steps, audited between each; returns the units
    /// the region gave back.
    fn revoke(&mut self, i: usize, sku: &str, units_max: Units) -> Units {
        let region = REGIONS[i];
        let LedgerApplied::Begun(t) = self.ledger(LedgerOp::BeginRevoke {
            region: region.into(),
            sku: sku.into(),
            units_max,
        }) else {
            panic!("BeginRevoke did not begin");
        };
        let done_below = self.ledger.done_below(region);
        let RegionApplied::Transfer { units, .. } = self.region(
            i,
            RegionOp::Revoke {
                transfer_id: t.id,
                sku: sku.into(),
                units_max,
                done_below,
            },
        ) else {
            panic!("Revoke did not transfer");
        };
        let sheet = self.check("revoke applied at the region");
        assert_eq!(sku_of(&sheet, sku).in_flight_revokes, units);
        self.ledger(LedgerOp::CompleteRevoke {
            transfer_id: t.id,
            units,
        });
        units
    }

    fn reserve(
        &mut self,
        i: usize,
        request_id: &str,
        lines: &[(&str, Units)],
        ttl_ms: Millis,
    ) -> ReservationId {
        let op = RegionOp::Reserve {
            owner: OWNER.into(),
            request_id: request_id.into(),
            lines: lines.iter().map(|&(s, q)| Line::new(s, q)).collect(),
            ttl_ms,
            allow_partial: false,
            // Any nonce will do (the id comes back in the answer); this one
            // differs between request ids.
            nonce: request_id
                .bytes()
                .fold(0x5eed, |h, b| h.rotate_left(8) ^ u64::from(b)),
        };
        match self.region(i, op) {
            RegionApplied::Reservation(r) => r.id,
            other => panic!("reserve gave {other:?}"),
        }
    }

    fn confirm(&mut self, i: usize, id: ReservationId, order_id: &str) {
        self.region(
            i,
            RegionOp::Confirm {
                id,
                owner: OWNER.into(),
                order_id: order_id.into(),
                lines: Vec::new(),
            },
        );
    }

    /// Settlement: the reconciler hands the outbox after the ledger's
    /// watermark to the ledger, then acknowledges it to the region; the audit
    /// balances in between. Returns the new watermark.
    fn settle(&mut self, i: usize) -> u64 {
        let region = REGIONS[i];
        let entries: Vec<SettleEntry> = self.regions[i]
            .outbox_after(self.ledger.watermark(region))
            .map(|e| SettleEntry {
                seq: e.seq,
                lines: e.lines.clone(),
            })
            .collect();
        self.ledger(LedgerOp::Settle {
            region: region.into(),
            entries,
        });
        self.check("settled at the ledger, not yet acknowledged");
        let up_to_seq = self.ledger.watermark(region);
        self.region(i, RegionOp::Settled { up_to_seq });
        up_to_seq
    }
}

fn sku_of<'a>(sheet: &'a BalanceSheet, sku: &str) -> &'a SkuBalance {
    sheet
        .skus
        .iter()
        .find(|s| s.sku == sku)
        .unwrap_or_else(|| panic!("no {sku} in {sheet:#?}"))
}

/// A cluster with 300 units of `a` and 90 of `b`, granted 100/100/50 of `a`
/// and 30 of `b` to each region.
fn granted_cluster() -> Cluster {
    let mut c = Cluster::new();
    c.check("nothing");
    c.stock("a", 300);
    c.stock("b", 90);
    c.grant(0, "a", 100);
    c.grant(1, "a", 100);
    c.grant(2, "a", 50);
    for i in 0..3 {
        c.grant(i, "b", 30);
    }
    c
}

/// A full flow of grants, sales, settlement and revokes balances at every intermediate step.
#[test]
fn full_flow_balances_at_every_step() {
    let mut c = granted_cluster();
    let sheet = c.check("grants");
    let a = sku_of(&sheet, "a");
    assert_eq!((a.stocked_total, a.pool, a.in_flight_grants), (300, 50, 0));

    // Shoppers in every region.
    let r1 = c.reserve(0, "req-1", &[("a", 10), ("b", 2)], 60_000);
    let r2 = c.reserve(0, "req-2", &[("a", 5)], 60_000);
    let r3 = c.reserve(1, "req-3", &[("a", 7)], 60_000);
    let r4 = c.reserve(2, "req-4", &[("a", 50)], 100);
    let r5 = c.reserve(1, "req-5", &[("b", 30)], 60_000);
    c.confirm(0, r1, "order-1");
    c.confirm(0, r2, "order-2");
    c.region(
        1,
        RegionOp::Release {
            id: r3,
            owner: OWNER.into(),
        },
    );
    c.confirm(1, r5, "order-5");
    // Ap-south's hold expires; it had every token of `a` there.
    c.now_ms += 1_000;
    c.region(2, RegionOp::Expire);
    assert_eq!(
        c.regions[2].reservation(r4).map(|r| r.state),
        Some(ReservationState::Expired)
    );

    // Settlement, with the audit between ledger and region.
    assert_eq!(c.settle(0), 2);
    assert_eq!(c.settle(1), 1);
    let sheet = c.check("settlement");
    let a = sku_of(&sheet, "a");
    let b = sku_of(&sheet, "b");
    assert_eq!(a.settled_total, 15);
    assert_eq!(b.settled_total, 32);
    assert_eq!(
        c.ledger
            .sku("a")
            .map(|s| s.granted.clone())
            .unwrap_or_default()
            .get("us-east"),
        Some(&85)
    );
    // A replayed settlement changes nothing and still balances.
    assert_eq!(c.settle(0), 2);

    // More sales after a settlement, then a partial settlement: the ledger
    // settles two, the region has heard of one.
    let r6 = c.reserve(0, "req-6", &[("a", 3)], 60_000);
    let r7 = c.reserve(0, "req-7", &[("a", 4)], 60_000);
    c.confirm(0, r6, "order-6");
    c.confirm(0, r7, "order-7");
    let entries: Vec<SettleEntry> = c.regions[0]
        .outbox_after(2)
        .map(|e| SettleEntry {
            seq: e.seq,
            lines: e.lines.clone(),
        })
        .collect();
    c.ledger(LedgerOp::Settle {
        region: "us-east".into(),
        entries,
    });
    c.region(0, RegionOp::Settled { up_to_seq: 3 });
    let sheet = c.check("half acknowledged");
    let us = &sku_of(&sheet, "a").regions[0];
    assert_eq!((us.region.as_str(), us.confirmed), ("us-east", 0));
    c.region(0, RegionOp::Settled { up_to_seq: 4 });

    // Revokes: one takes all it asks, one takes less (held tokens stay).
    // Held tokens are not revocable: eu-west keeps 90 on hold.
    c.reserve(1, "req-8", &[("a", 90)], 60_000);
    assert_eq!(c.revoke(0, "a", 20), 20);
    assert_eq!(c.revoke(1, "a", 50), 10);
    assert_eq!(c.revoke(2, "a", 50), 50);
    assert_eq!(c.revoke(2, "b", 30), 30);

    // Retries of finished steps are duplicates and keep the balance.
    let t = c.grant(0, "a", 10);
    let done_below = c.ledger.done_below("us-east");
    let again = c.region(
        0,
        RegionOp::Grant {
            transfer_id: t,
            sku: "a".into(),
            units: 10,
            done_below: done_below.min(t),
        },
    );
    assert!(matches!(again, RegionApplied::Transfer { duplicate: true, .. }));
    c.ledger(LedgerOp::CompleteGrant { transfer_id: t });

    // Stock changes at the ledger while all of this is going on.
    c.stock("a", 25);
    c.stock("a", -5);
    let sheet = c.check("the end");
    let a = sku_of(&sheet, "a");
    let found: Units = a.pool
        + a.settled_total
        + a.in_flight_grants
        + a.in_flight_revokes
        + a.regions
            .iter()
            .map(|r| r.available + r.held + r.confirmed)
            .sum::<Units>();
    assert_eq!(found, a.stocked_total);
    assert_eq!(a.stocked_total, 320);
    assert_eq!(a.settled_total, 22);
}

/// Grants and revokes left in flight at each of their steps are placed so the audit balances.
#[test]
fn transfers_in_flight_balance() {
    let mut c = granted_cluster();
    let begun = |c: &mut Cluster, op| match c.ledger(op) {
        LedgerApplied::Begun(t) => t,
        other => panic!("{other:?}"),
    };
    let g = begun(
        &mut c,
        LedgerOp::BeginGrant {
            region: "us-east".into(),
            sku: "a".into(),
            units: 20,
        },
    );
    let r = begun(
        &mut c,
        LedgerOp::BeginRevoke {
            region: "eu-west".into(),
            sku: "a".into(),
            units_max: 30,
        },
    );
    let g2 = begun(
        &mut c,
        LedgerOp::BeginGrant {
            region: "ap-south".into(),
            sku: "a".into(),
            units: 30,
        },
    );
    let sheet = c.check("three begun");
    let a = sku_of(&sheet, "a");
    assert_eq!((a.pool, a.in_flight_grants, a.in_flight_revokes), (0, 50, 0));

    c.region(
        0,
        RegionOp::Grant {
            transfer_id: g.id,
            sku: "a".into(),
            units: 20,
            done_below: c.ledger.done_below("us-east"),
        },
    );
    c.region(
        1,
        RegionOp::Revoke {
            transfer_id: r.id,
            sku: "a".into(),
            units_max: 30,
            done_below: c.ledger.done_below("eu-west"),
        },
    );
    let sheet = c.check("two applied");
    let a = sku_of(&sheet, "a");
    assert_eq!((a.in_flight_grants, a.in_flight_revokes), (30, 30));
    // Sales in the middle of it all.
    let id = c.reserve(0, "req-1", &[("a", 110)], 0);
    c.confirm(0, id, "order-1");
    c.settle(0);
    c.ledger(LedgerOp::CompleteGrant { transfer_id: g.id });
    c.ledger(LedgerOp::CompleteRevoke {
        transfer_id: r.id,
        units: 30,
    });
    c.region(
        2,
        RegionOp::Grant {
            transfer_id: g2.id,
            sku: "a".into(),
            units: 30,
            done_below: c.ledger.done_below("ap-south"),
        },
    );
    c.ledger(LedgerOp::CompleteGrant { transfer_id: g2.id });
    let sheet = c.check("all complete");
    let a = sku_of(&sheet, "a");
    assert_eq!(
        (a.pool, a.in_flight_grants, a.in_flight_revokes, a.settled_total),
        (30, 0, 0, 110)
    );
}

/// A grant applied at a region that the ledger never began is drift of exactly its units.
#[test]
fn grant_never_begun_is_drift() {
    let mut c = granted_cluster();
    c.regions[1]
        .apply(RegionCommand {
            now_ms: c.now_ms,
            op: RegionOp::Grant {
                transfer_id: 999,
                sku: "a".into(),
                units: 7,
                done_below: 0,
            },
        })
        .expect("the region cannot know");
    let sheet = c.sheet();
    assert!(!sheet.balanced());
    let a = sku_of(&sheet, "a");
    assert_eq!(a.drift, 7);
    assert_eq!(a.ledger_drift, 0);
    let drifts: Vec<(&str, i64)> = a.regions.iter().map(|r| (r.region.as_str(), r.drift)).collect();
    assert_eq!(drifts, vec![("us-east", 0), ("eu-west", 7), ("ap-south", 0)]);
    assert!(sku_of(&sheet, "b").balanced());
    assert_eq!(sheet.total_drift(), 14);
}

/// A ledger completing what the region did not apply (or took) is drift.
#[test]
fn ledger_ahead_of_the_region_is_drift() {
    let mut c = granted_cluster();
    let LedgerApplied::Begun(t) = c.ledger(LedgerOp::BeginGrant {
        region: "ap-south".into(),
        sku: "a".into(),
        units: 10,
    }) else {
        panic!("not begun");
    };
    c.ledger
        .apply(LedgerCommand {
            now_ms: c.now_ms,
            op: LedgerOp::CompleteGrant { transfer_id: t.id },
        })
        .expect("the ledger cannot know");
    let sheet = c.sheet();
    assert!(!sheet.balanced());
    let a = sku_of(&sheet, "a");
    assert_eq!(a.drift, -10, "ten units are nowhere");
    assert_eq!(a.regions[2].drift, -10);

    let mut c = granted_cluster();
    let LedgerApplied::Begun(t) = c.ledger(LedgerOp::BeginRevoke {
        region: "us-east".into(),
        sku: "b".into(),
        units_max: 20,
    }) else {
        panic!("not begun");
    };
    c.region(
        0,
        RegionOp::Revoke {
            transfer_id: t.id,
            sku: "b".into(),
            units_max: 20,
            done_below: t.id,
        },
    );
    c.ledger
        .apply(LedgerCommand {
            now_ms: c.now_ms,
            op: LedgerOp::CompleteRevoke {
                transfer_id: t.id,
                units: 15,
            },
        })
        .expect("the ledger cannot know");
    // The region took 20 but the ledger was told 15: the pool is short 5.
    let b = sku_of(&c.sheet(), "b").clone();
    assert_eq!(b.drift, -5);
    assert_eq!(
        b.regions[0].drift, -5,
        "us-east holds 5 fewer than the ledger believes"
    );
}

/// A region known to the ledger but not supplied is in missing_regions, and nothing balances.
#[test]
fn missing_region_is_reported() {
    let mut c = Cluster::new();
    c.stock("a", 100);
    c.grant(0, "a", 10);
    c.grant(1, "a", 10);
    let two = audit::balance(&c.ledger, &[&c.regions[0], &c.regions[1]]);
    assert!(two.missing_regions.is_empty());
    assert!(two.balanced());

    c.grant(2, "a", 10);
    let two = audit::balance(&c.ledger, &[&c.regions[0], &c.regions[1]]);
    assert_eq!(two.missing_regions, vec!["ap-south".to_string()]);
    assert!(!two.balanced());
    // The cut-off region is counted at the ledger's belief: no drift.
    assert_eq!(two.skus[0].drift, 0, "{two:?}");
    assert_eq!(two.total_drift(), 0, "{two:?}");
    let none = audit::balance::<RegionState>(&c.ledger, &[]);
    assert_eq!(none.missing_regions.len(), 3);
    assert!(!none.balanced());

    // A region known only by a begun (not applied) revoke is known too.
    let mut c = Cluster::new();
    c.stock("a", 100);
    c.ledger(LedgerOp::BeginRevoke {
        region: "eu-west".into(),
        sku: "a".into(),
        units_max: 1,
    });
    let one = audit::balance(&c.ledger, &[&c.regions[0]]);
    assert_eq!(one.missing_regions, vec!["eu-west".to_string()]);
}

/// A standalone region balances on its own books through stock, sales and settlement.
#[test]
fn standalone_region_balances() {
    let mut r = RegionState::new("us-east");
    let mut now = T0;
    let mut step = |r: &mut RegionState, op: RegionOp| {
        now += 1;
        let out = r.apply(RegionCommand { now_ms: now, op }).expect("applies");
        let sheet = audit::balance_standalone(r);
        assert!(sheet.balanced(), "{sheet:#?}");
        out
    };
    step(
        &mut r,
        RegionOp::AdjustStock {
            request_id: "adj-1".into(),
            sku: "a".into(),
            delta: 10,
        },
    );
    step(
        &mut r,
        RegionOp::Reserve {
            owner: OWNER.into(),
            request_id: "req-1".into(),
            lines: vec![Line::new("a", 4)],
            ttl_ms: 0,
            allow_partial: false,
            nonce: 1,
        },
    );
    step(
        &mut r,
        RegionOp::Confirm {
            id: ReservationId(1),
            owner: OWNER.into(),
            order_id: "order-1".into(),
            lines: Vec::new(),
        },
    );
    step(&mut r, RegionOp::Settled { up_to_seq: 1 });
    step(
        &mut r,
        RegionOp::AdjustStock {
            request_id: "adj-2".into(),
            sku: "a".into(),
            delta: -6,
        },
    );
    let sheet = audit::balance_standalone(&r);
    let a = sku_of(&sheet, "a");
    assert_eq!((a.stocked_total, a.settled_total), (4, 4));
    assert_eq!(a.regions[0].available, 0);
}
