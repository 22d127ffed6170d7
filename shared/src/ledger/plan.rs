//! What settling a hold and expiring lots will write, worked out from the account as read.
//! Pure functions: the writers in `settle` and `expire` turn a plan into one transaction.

use std::collections::HashMap;

use super::{Account, Hold, Lot, NO_EXPIRY};

/// What a settle will write, worked out from the account as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettlePlan {
    /// New `remaining` of each lot touched.
    pub lots: Vec<(String, i64)>,
    /// Credits spent.
    pub captured: i64,
    /// Credits returned.
    pub released: i64,
    /// Credits expired.
    pub expired: i64,
    /// Credits of the hold's expired share given back (in a grace lot), not expired.
    pub refunded: i64,
}

/// What becomes of the unspent part of a hold whose lots expired while it was held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiredShare {
    /// It expires, as it would have without the hold: the session ended for a reason of the
    /// user's (delivered, refused by the content policy, an invalid request).
    Lost,
    /// It comes back in full, in a short-lived grace lot: the session ended by our failure
    /// (an outage, a dead letter, a timeout), which must not cost the user anything.
    Refunded,
}

/// Works out the end of `session_id`'s hold, capturing `capture` credits (at most the hold).
/// Spending draws earliest expiry first: the hold's expired part, then live lots by expiry.
pub fn plan_settle(
    account: &Account,
    session_id: &str,
    capture: i64,
    share: ExpiredShare,
) -> Option<SettlePlan> {
    let hold = account.holds.get(session_id)?;
    let captured = capture.clamp(0, hold.amount);
    let from_expired = captured.min(hold.expired_part);
    let unspent = hold.expired_part - from_expired;
    let (expired, refunded) = match share {
        ExpiredShare::Lost => (unspent, 0),
        ExpiredShare::Refunded => (0, unspent),
    };
    let mut lots = HashMap::new();
    draw(account, &mut lots, true, hold.expired_part);
    draw(account, &mut lots, false, captured - from_expired);
    let mut lots: Vec<(String, i64)> = lots.into_iter().collect();
    lots.sort();
    Some(SettlePlan {
        lots,
        captured,
        released: hold.amount - captured - unspent,
        expired,
        refunded,
    })
}

/// Takes `amount` from the lots of one state (expired or live), earliest expiry first.
fn draw(account: &Account, out: &mut HashMap<String, i64>, expired: bool, mut amount: i64) {
    for (id, lot) in lots_by_expiry(account) {
        if amount == 0 {
            break;
        }
        if lot.expired != expired {
            continue;
        }
        let remaining = out.get(id).copied().unwrap_or(lot.remaining);
        let take = remaining.min(amount);
        if take > 0 {
            out.insert(id.clone(), remaining - take);
            amount -= take;
        }
    }
}

fn lots_by_expiry(account: &Account) -> Vec<(&String, &Lot)> {
    let mut lots: Vec<_> = account.lots.iter().collect();
    lots.sort_by_key(|(id, lot)| {
        (
            lot.expires_at_secs.unwrap_or(NO_EXPIRY),
            lot.granted_at_ms,
            *id,
        )
    });
    lots
}

/// What an expiry run will write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpiryPlan {
    /// Each lot expired now: its id, the credits lost, and what remains to back older holds.
    pub lots: Vec<(String, i64, i64)>,
    /// New `expired_part` of each hold that an expired lot now backs.
    pub holds: Vec<(String, i64)>,
    /// Earliest expiry among the lots left (epoch seconds).
    pub next_expiry_secs: i64,
}

impl ExpiryPlan {
    /// Credits lost in all.
    pub fn expired(&self) -> i64 {
        self.lots.iter().map(|(_, lost, _)| lost).sum()
    }
}

/// Works out the expiry of the first `max_lots` lots past their time, earliest first (the
/// rest stay due: the next expiry says so). Credits of a lot that back holds made before the
/// expiry stay with those holds; the rest are lost. A lot's share depends only on the lots
/// before it, so expiring them in chunks gives what expiring them at once would.
pub fn plan_expiry(account: &Account, now_secs: i64, max_lots: usize) -> ExpiryPlan {
    let mut holds: Vec<(&String, &Hold)> = account.holds.iter().collect();
    holds.sort_by_key(|(id, h)| (h.created_at_ms, *id));
    let mut parts: HashMap<&String, i64> =
        holds.iter().map(|(id, h)| (*id, h.expired_part)).collect();
    let mut plan = ExpiryPlan {
        next_expiry_secs: NO_EXPIRY,
        ..ExpiryPlan::default()
    };
    for (id, lot) in lots_by_expiry(account) {
        if lot.expired {
            continue;
        }
        let due = lot.expires_at_secs.filter(|t| *t <= now_secs);
        let Some(expires_at) = due.filter(|_| plan.lots.len() < max_lots) else {
            plan.next_expiry_secs = plan
                .next_expiry_secs
                .min(lot.expires_at_secs.unwrap_or(NO_EXPIRY));
            continue;
        };
        let mut free = lot.remaining;
        for (hold_id, hold) in &holds {
            if hold.created_at_ms >= crate::clock::secs_to_ms(expires_at) {
                continue;
            }
            let part = parts.get_mut(hold_id).expect("every hold has a part");
            let take = (hold.amount - *part).min(free);
            *part += take;
            free -= take;
        }
        plan.lots.push((id.clone(), free, lot.remaining - free));
    }
    plan.holds = holds
        .iter()
        .filter(|(id, h)| parts[id] != h.expired_part)
        .map(|(id, _)| ((*id).clone(), parts[id]))
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(amount: i64, remaining: i64, expires_at: Option<i64>) -> Lot {
        Lot {
            amount,
            remaining,
            expires_at_secs: expires_at,
            source: "test".into(),
            granted_at_ms: 0,
            expired: false,
        }
    }

    fn hold(amount: i64, created_at: i64) -> Hold {
        Hold {
            amount,
            created_at_ms: created_at,
            expired_part: 0,
            model: "m".into(),
        }
    }

    fn account(lots: &[(&str, Lot)], holds: &[(&str, Hold)]) -> Account {
        let held: i64 = holds.iter().map(|(_, h)| h.amount).sum();
        let total: i64 = lots.iter().map(|(_, l)| l.remaining).sum();
        Account {
            available: total - held,
            held,
            granted: total,
            inflight: holds.len() as i64,
            lots: lots
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            holds: holds
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            next_expiry_secs: NO_EXPIRY,
            ..Account::default()
        }
    }

    #[test]
    fn capture_draws_the_earliest_expiring_lot_first() {
        let a = account(
            &[
                ("forever", lot(10, 10, None)),
                ("late", lot(10, 10, Some(2000))),
                ("soon", lot(5, 5, Some(1000))),
            ],
            &[("s", hold(8, 0))],
        );
        let plan = plan_settle(&a, "s", 8, ExpiredShare::Lost).unwrap();
        assert_eq!(plan.lots, vec![("late".into(), 7), ("soon".into(), 0)]);
        assert_eq!((plan.captured, plan.released, plan.expired), (8, 0, 0));
    }

    #[test]
    fn partial_capture_releases_the_rest() {
        let a = account(&[("l", lot(10, 10, None))], &[("s", hold(8, 0))]);
        let plan = plan_settle(&a, "s", 6, ExpiredShare::Lost).unwrap();
        assert_eq!((plan.captured, plan.released, plan.expired), (6, 2, 0));
        assert_eq!(plan.lots, vec![("l".into(), 4)]);
        assert!(plan_settle(&a, "other", 6, ExpiredShare::Lost).is_none());
    }

    #[test]
    fn an_expiring_lot_keeps_what_backs_older_holds() {
        // 10 credits expire at t=100 s; a hold of 4 was made at t=50 s.
        let a = account(
            &[("soon", lot(10, 10, Some(100))), ("later", lot(5, 5, None))],
            &[("old", hold(4, 50_000))],
        );
        let plan = plan_expiry(&a, 100, usize::MAX);
        assert_eq!(plan.lots, vec![("soon".into(), 6, 4)]);
        assert_eq!(plan.holds, vec![("old".into(), 4)]);
        assert_eq!(plan.next_expiry_secs, NO_EXPIRY);
        assert_eq!(plan.expired(), 6);
    }

    #[test]
    fn holds_made_after_the_expiry_are_not_backed_by_the_lot() {
        let a = account(
            &[("soon", lot(10, 10, Some(100))), ("later", lot(5, 5, None))],
            &[("new", hold(4, 150_000))],
        );
        let plan = plan_expiry(&a, 200, usize::MAX);
        assert_eq!(plan.lots, vec![("soon".into(), 10, 0)]);
        assert!(plan.holds.is_empty());
    }

    #[test]
    fn a_released_hold_gives_back_nothing_of_an_expired_lot() {
        let mut a = account(
            &[("soon", lot(10, 4, Some(100)))],
            &[("old", hold(4, 50_000))],
        );
        a.lots.get_mut("soon").unwrap().expired = true;
        a.holds.get_mut("old").unwrap().expired_part = 4;
        let release = plan_settle(&a, "old", 0, ExpiredShare::Lost).unwrap();
        assert_eq!(
            (release.captured, release.released, release.expired),
            (0, 0, 4)
        );
        let capture = plan_settle(&a, "old", 3, ExpiredShare::Lost).unwrap();
        assert_eq!(
            (capture.captured, capture.released, capture.expired),
            (3, 0, 1)
        );
        assert_eq!(capture.lots, vec![("soon".into(), 0)]);
    }

    #[test]
    fn a_hold_ended_by_our_failure_refunds_its_expired_share() {
        let mut a = account(
            &[("soon", lot(10, 4, Some(100))), ("l", lot(5, 5, None))],
            &[("old", hold(6, 50_000))],
        );
        a.lots.get_mut("soon").unwrap().expired = true;
        a.holds.get_mut("old").unwrap().expired_part = 4;
        let release = plan_settle(&a, "old", 0, ExpiredShare::Refunded).unwrap();
        assert_eq!(
            (
                release.captured,
                release.released,
                release.expired,
                release.refunded
            ),
            (0, 2, 0, 4)
        );
        assert_eq!(release.lots, vec![("soon".into(), 0)]);
    }

    #[test]
    fn an_expiry_in_chunks_leaves_the_rest_due() {
        let a = account(
            &[("a", lot(1, 1, Some(100))), ("b", lot(1, 1, Some(120)))],
            &[],
        );
        let plan = plan_expiry(&a, 150, 1);
        assert_eq!(plan.lots, vec![("a".into(), 1, 0)]);
        assert_eq!(plan.next_expiry_secs, 120, "still due");
    }

    #[test]
    fn lots_not_yet_due_set_the_next_expiry() {
        let a = account(
            &[("a", lot(1, 1, Some(100))), ("b", lot(1, 1, Some(300)))],
            &[],
        );
        let plan = plan_expiry(&a, 150, usize::MAX);
        assert_eq!(plan.next_expiry_secs, 300);
        assert_eq!(plan.expired(), 1);
    }
}
