//! Every acknowledged hold, read back after the run (`--check-acknowledged`).
//!
//! The runner files each reservation the target acknowledged with what the
//! session did with it afterwards ([`Fate`]); once the books are read, each
//! is asked for again (`GetReservation` on its region) and its state must
//! fit its fate: a confirm answered OK is confirmed or settled, a release
//! answered OK is released (or expired, when its time was up), a hold left alone is held or expired (or, when
//! a follow-up's outcome is unknown, any state). A reservation the region no
//! longer knows is lost. Reservoir only: the baselines keep no history.
//!
//! Ended reservations are kept for the region's retention window (5 minutes
//! by default), so the check suits runs whose holds end within it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reservoir_proto::v1::ReservationState;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::target::Target;

/// Most acknowledged reservations filed in one run; later ones are counted
/// as not filed.
pub const FILED_MAX: usize = 2_000_000;
/// Reads in flight while checking.
pub const READS_IN_FLIGHT: usize = 32;
/// Tries of one read that fails with a retryable error (20 s in all: an
/// election or two).
pub const READ_TRIES: u32 = 100;
/// Pause between those tries.
pub const READ_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Examples of problems kept in the report.
pub const EXAMPLES_MAX: usize = 10;

/// What the session did with an acknowledged hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Nothing answered OK after the reserve (abandoned, or its follow-up
    /// was refused): held, or expired by now.
    Held,
    /// Its confirm was answered OK.
    Confirmed,
    /// Its release was answered OK: released, or expired (a release that
    /// finds the hold's time already up ends it as expired, and answers OK).
    Released,
    /// Its follow-up's outcome is unknown (retries ran out): any state.
    Unknown,
}

impl Fate {
    /// True when `state` is one this fate allows.
    pub fn allows(self, state: ReservationState) -> bool {
        use ReservationState as S;
        match self {
            Fate::Held => matches!(state, S::Held | S::Expired),
            Fate::Confirmed => matches!(state, S::Confirmed | S::Settled),
            Fate::Released => matches!(state, S::Released | S::Expired),
            Fate::Unknown => state != S::Unspecified,
        }
    }
}

/// One acknowledged reservation.
#[derive(Clone, Debug)]
struct Filed {
    region: usize,
    reservation_id: String,
    fate: Fate,
}

/// The acknowledged reservations of a run.
#[derive(Debug, Default)]
pub struct Ledger {
    filed: Mutex<Vec<Filed>>,
    not_filed: AtomicU64,
}

/// What reading them back found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AckReport {
    /// Acknowledged reservations filed.
    pub filed: u64,
    /// Acknowledged past [`FILED_MAX`], not checked.
    pub not_filed: u64,
    /// Read back in a state their fate allows.
    pub found: u64,
    /// Not known to their region: lost.
    pub lost: u64,
    /// Found in a state their fate does not allow.
    pub wrong_state: u64,
    /// Could not be read (the region did not answer).
    pub unread: u64,
    /// Found, by fate and state, e.g. `confirmed/settled`.
    pub states: BTreeMap<String, u64>,
    /// A few of the problems.
    pub examples: Vec<String>,
}

impl AckReport {
    /// True when some reservations were filed, none past the bound, and
    /// every one was found in an allowed state (a run that acknowledged
    /// nothing proves nothing).
    pub fn clean(&self) -> bool {
        self.filed > 0 && self.not_filed == 0 && self.lost == 0 && self.wrong_state == 0 && self.unread == 0
    }
}

impl Ledger {
    /// Files an acknowledged reservation with its fate.
    pub fn file(&self, region: usize, reservation_id: &str, fate: Fate) {
        let mut filed = self.filed.lock().unwrap_or_else(|p| p.into_inner());
        if filed.len() >= FILED_MAX {
            self.not_filed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        filed.push(Filed {
            region,
            reservation_id: reservation_id.to_string(),
            fate,
        });
    }

    /// Reads every filed reservation back from `target` and checks its
    /// state; `None` when the target keeps no reservations to read.
    pub async fn check(&self, target: &Target) -> Option<AckReport> {
        let Target::Reservoir(reservoir) = target else {
            return None;
        };
        let filed = std::mem::take(&mut *self.filed.lock().unwrap_or_else(|p| p.into_inner()));
        let mut report = AckReport {
            filed: filed.len() as u64,
            not_filed: self.not_filed.load(Ordering::Relaxed),
            ..AckReport::default()
        };
        let mut reads = JoinSet::new();
        let mut rest = filed.into_iter();
        loop {
            while reads.len() < READS_IN_FLIGHT {
                let Some(f) = rest.next() else { break };
                let reservoir = reservoir.clone();
                reads.spawn(async move {
                    let mut tries = 0;
                    let result = loop {
                        match reservoir.reservation_state(f.region, &f.reservation_id).await {
                            Err(e) if e.retryable && tries + 1 < READ_TRIES => {
                                tries += 1;
                                tokio::time::sleep(READ_RETRY_PAUSE).await;
                            }
                            other => break other,
                        }
                    };
                    (f, result)
                });
            }
            let Some(done) = reads.join_next().await else {
                break;
            };
            let Ok((f, result)) = done else {
                report.unread += 1;
                continue;
            };
            let problem = match result {
                Ok(Some(state)) if f.fate.allows(state) => {
                    report.found += 1;
                    let key = format!("{}/{}", fate_name(f.fate), state_name(state));
                    *report.states.entry(key).or_insert(0) += 1;
                    None
                }
                Ok(Some(state)) => {
                    report.wrong_state += 1;
                    Some(format!(
                        "{} (region {}): {} after {}",
                        f.reservation_id,
                        f.region,
                        state_name(state),
                        fate_name(f.fate)
                    ))
                }
                Ok(None) => {
                    report.lost += 1;
                    Some(format!("{} (region {}): not found", f.reservation_id, f.region))
                }
                Err(e) => {
                    report.unread += 1;
                    Some(format!("{} (region {}): {e}", f.reservation_id, f.region))
                }
            };
            if let Some(p) = problem
                && report.examples.len() < EXAMPLES_MAX
            {
                report.examples.push(p);
            }
        }
        Some(report)
    }
}

fn fate_name(fate: Fate) -> &'static str {
    match fate {
        Fate::Held => "held",
        Fate::Confirmed => "confirmed",
        Fate::Released => "released",
        Fate::Unknown => "unknown",
    }
}

fn state_name(state: ReservationState) -> &'static str {
    use ReservationState as S;
    match state {
        S::Unspecified => "unspecified",
        S::Held => "held",
        S::Confirmed => "confirmed",
        S::Released => "released",
        S::Expired => "expired",
        S::Settled => "settled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each fate allows exactly the states its session can leave behind.
    #[test]
    fn fates_allow_only_their_states() {
        use ReservationState as S;
        let all = [
            S::Unspecified,
            S::Held,
            S::Confirmed,
            S::Released,
            S::Expired,
            S::Settled,
        ];
        let allowed = |fate: Fate| {
            all.iter()
                .copied()
                .filter(|s| fate.allows(*s))
                .collect::<Vec<_>>()
        };
        assert_eq!(allowed(Fate::Held), vec![S::Held, S::Expired]);
        assert_eq!(allowed(Fate::Confirmed), vec![S::Confirmed, S::Settled]);
        assert_eq!(allowed(Fate::Released), vec![S::Released, S::Expired]);
        assert_eq!(allowed(Fate::Unknown).len(), 5);
    }

    /// Filing stops at the bound and counts the rest.
    #[test]
    fn filing_is_bounded() {
        let ledger = Ledger::default();
        ledger.file(0, "r1", Fate::Held);
        assert_eq!(ledger.filed.lock().unwrap().len(), 1);
        ledger.filed.lock().unwrap().resize(
            FILED_MAX,
            Filed {
                region: 0,
                reservation_id: String::new(),
                fate: Fate::Held,
            },
        );
        ledger.file(0, "r2", Fate::Held);
        assert_eq!(ledger.not_filed.load(Ordering::Relaxed), 1);
    }
}
