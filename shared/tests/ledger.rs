//! The credit ledger against moto: lots, expiry, capture and release exactly once, conservation.

use shared::clock;
use shared::ledger::{self, EntryKind, ExpiredShare, Reservation, ReserveError, Settlement};
use testkit::World;

async fn hold(world: &World, user: &str, amount: i64) -> Result<String, ReserveError> {
    let session = shared::table::keys::new_id();
    let reservation = Reservation {
        user_id: user,
        session_id: &session,
        amount,
        model: "seedream-4.0",
        inflight_cap: 100,
    };
    ledger::reserve(world.ddb(), world.table(), &reservation, vec![]).await?;
    Ok(session)
}

async fn settle(world: &World, user: &str, session: &str, capture: i64) -> Settlement {
    ledger::settle(
        world.ddb(),
        world.table(),
        user,
        session,
        capture,
        ExpiredShare::Lost,
        vec![],
    )
    .await
    .unwrap()
}

async fn kinds(world: &World, user: &str) -> Vec<EntryKind> {
    ledger::entries_between(world.ddb(), world.table(), user, "0", "~")
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect()
}

#[tokio::test]
async fn lots_are_drawn_earliest_expiry_first() {
    let world = World::new().await;
    let now = clock::now_secs();
    let forever = world.grant("lots", 10, None).await;
    let late = world.grant("lots", 10, Some(now + 7200)).await;
    let soon = world.grant("lots", 5, Some(now + 3600)).await;
    let session = hold(&world, "lots", 8).await.unwrap();
    settle(&world, "lots", &session, 8).await;
    let account = world.assert_conserved("lots").await;
    assert!(
        !account.lots.contains_key(&soon),
        "the soonest lot is spent first and removed"
    );
    assert_eq!(account.lots[&late].remaining, 7);
    assert_eq!(account.lots[&forever].remaining, 10);
    assert_eq!(account.captured, 8);
}

#[tokio::test]
async fn an_expired_lot_is_never_spent_and_its_expiry_is_recorded() {
    let world = World::new().await;
    let now = clock::now_secs();
    world.grant("exp", 10, Some(now - 5)).await;
    world.grant("exp", 5, None).await;
    // 8 > the 5 credits still valid: refused, and the refusal expired the old lot.
    match hold(&world, "exp", 8).await {
        Err(ReserveError::Insufficient { available }) => assert_eq!(available, 5),
        other => panic!("expected insufficient, got {other:?}"),
    }
    let account = world.assert_conserved("exp").await;
    assert_eq!((account.available, account.expired), (5, 10));
    assert!(kinds(&world, "exp").await.contains(&EntryKind::Expire));
    assert!(hold(&world, "exp", 5).await.is_ok());
}

#[tokio::test]
async fn credits_held_before_an_expiry_stay_valid_for_that_hold() {
    let world = World::new().await;
    let now = clock::now_secs();
    world.grant("keep", 10, Some(now + 60)).await;
    let session = hold(&world, "keep", 8).await.unwrap();
    // The lot's time comes while the hold is open.
    let lost = ledger::expire_due(world.ddb(), world.table(), "keep", now + 61)
        .await
        .unwrap();
    assert_eq!(lost, 2, "only the unheld credits expire");
    let account = world.assert_conserved("keep").await;
    assert_eq!(
        (account.available, account.held, account.expired),
        (0, 8, 2)
    );
    assert_eq!(
        settle(&world, "keep", &session, 8).await,
        Settlement::Settled {
            captured: 8,
            released: 0,
            expired: 0,
            refunded: 0
        }
    );
    let account = world.assert_conserved("keep").await;
    assert_eq!(
        (account.captured, account.expired, account.available),
        (8, 2, 0)
    );
}

#[tokio::test]
async fn releasing_a_hold_backed_by_an_expired_lot_expires_it_instead() {
    let world = World::new().await;
    let now = clock::now_secs();
    world.grant("rel", 10, Some(now + 60)).await;
    let session = hold(&world, "rel", 8).await.unwrap();
    ledger::expire_due(world.ddb(), world.table(), "rel", now + 61)
        .await
        .unwrap();
    assert_eq!(
        settle(&world, "rel", &session, 3).await,
        Settlement::Settled {
            captured: 3,
            released: 0,
            expired: 5,
            refunded: 0
        }
    );
    let account = world.assert_conserved("rel").await;
    assert_eq!(
        (account.available, account.captured, account.expired),
        (0, 3, 7)
    );
}

#[tokio::test]
async fn capture_and_release_happen_at_most_once_whatever_is_retried() {
    let world = World::new().await;
    world.grant("once", 100, None).await;
    let session = hold(&world, "once", 8).await.unwrap();
    let attempts: Vec<_> = (0..6)
        .map(|i| {
            let (ddb, table, session) = (
                world.ddb().clone(),
                world.table().to_owned(),
                session.clone(),
            );
            // Half try to capture, half to release: exactly one of all of them wins.
            tokio::spawn(async move {
                ledger::settle(
                    &ddb,
                    &table,
                    "once",
                    &session,
                    if i % 2 == 0 { 8 } else { 0 },
                    ExpiredShare::Lost,
                    vec![],
                )
                .await
                .unwrap()
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for a in attempts {
        outcomes.push(a.await.unwrap());
    }
    let winners = outcomes
        .iter()
        .filter(|o| **o != Settlement::AlreadySettled)
        .count();
    assert_eq!(winners, 1, "{outcomes:?}");
    let account = world.assert_conserved("once").await;
    assert_eq!(account.held, 0);
    assert_eq!(account.inflight, 0);
    assert_eq!(account.available + account.captured, 100);
    let settles = kinds(&world, "once")
        .await
        .into_iter()
        .filter(|k| matches!(k, EntryKind::Capture | EntryKind::Release))
        .count();
    assert_eq!(settles, 1);
    assert_eq!(
        settle(&world, "once", &session, 8).await,
        Settlement::AlreadySettled
    );
}

#[tokio::test]
async fn partial_capture_releases_the_rest() {
    let world = World::new().await;
    world.grant("part", 20, None).await;
    let session = hold(&world, "part", 8).await.unwrap();
    assert_eq!(
        settle(&world, "part", &session, 6).await,
        Settlement::Settled {
            captured: 6,
            released: 2,
            expired: 0,
            refunded: 0
        }
    );
    let account = world.assert_conserved("part").await;
    assert_eq!(
        (account.available, account.held, account.captured),
        (14, 0, 6)
    );
    let kinds = kinds(&world, "part").await;
    assert_eq!(
        kinds,
        vec![
            EntryKind::Grant,
            EntryKind::Hold,
            EntryKind::Capture,
            EntryKind::Release
        ]
    );
}

#[tokio::test]
async fn ledger_rebuilds_the_account_after_a_mixed_history() {
    let world = World::new().await;
    let now = clock::now_secs();
    world.grant("mix", 50, Some(now + 30)).await;
    world.grant("mix", 30, None).await;
    let mut sessions = Vec::new();
    for amount in [8, 4, 12, 6] {
        sessions.push(hold(&world, "mix", amount).await.unwrap());
    }
    settle(&world, "mix", &sessions[0], 8).await;
    settle(&world, "mix", &sessions[1], 0).await;
    ledger::expire_due(world.ddb(), world.table(), "mix", now + 31)
        .await
        .unwrap();
    settle(&world, "mix", &sessions[2], 5).await;
    world.grant("mix", 7, Some(now + 3600)).await;
    let late = hold(&world, "mix", 9).await.unwrap();
    settle(&world, "mix", &late, 9).await;
    let account = world.assert_conserved("mix").await;
    assert_eq!(account.holds.len(), 1);
    assert_eq!(account.granted, 87);
}

#[tokio::test]
async fn a_repeated_grant_of_the_same_lot_grants_once() {
    let world = World::new().await;
    let grant = ledger::Grant {
        user_id: "g",
        lot_id: "purchase-1",
        amount: 25,
        expires_at_secs: None,
        source: "purchase",
    };
    let first = ledger::grant(world.ddb(), world.table(), &grant, vec![])
        .await
        .unwrap();
    let again = ledger::grant(world.ddb(), world.table(), &grant, vec![])
        .await
        .unwrap();
    assert!(first.created && !again.created);
    let account = world.assert_conserved("g").await;
    assert_eq!(account.available, 25);
}

#[tokio::test]
async fn an_unheld_lot_expires_and_the_account_stays_usable() {
    // On AWS this expiry used to be refused (a `:true` value no expression used), and from then
    // on every reserve and balance read of the user failed.
    let world = World::new().await;
    let now = clock::now_secs();
    world.grant("unheld", 10, Some(now + 100)).await;
    world.grant("unheld", 5, None).await;
    let lost = ledger::expire_due(world.ddb(), world.table(), "unheld", now + 200)
        .await
        .expect("the expiry of an unheld lot is accepted");
    assert_eq!(lost, 10);
    let account = world.assert_conserved("unheld").await;
    assert_eq!((account.available, account.expired), (5, 10));
    assert_eq!(account.next_expiry_secs, ledger::NO_EXPIRY);
    assert!(account.lots.values().all(|l| l.expires_at_secs.is_none()));
    assert!(hold(&world, "unheld", 5).await.is_ok());
}

#[tokio::test]
async fn a_fully_spent_lot_expires_cleanly_and_the_account_stays_usable() {
    let world = World::new().await;
    let now = clock::now_secs();
    world.grant("spent", 4, Some(now + 100)).await;
    world.grant("spent", 5, None).await;
    let session = hold(&world, "spent", 4).await.unwrap();
    settle(&world, "spent", &session, 4).await;
    assert_eq!(
        world.account("spent").await.lots.len(),
        1,
        "the spent lot is gone"
    );
    let lost = ledger::expire_due(world.ddb(), world.table(), "spent", now + 200)
        .await
        .expect("an expiry with nothing left to expire is accepted");
    assert_eq!(lost, 0);
    let account = world.assert_conserved("spent").await;
    assert_eq!(
        (account.available, account.captured, account.expired),
        (5, 4, 0)
    );
    assert_eq!(account.next_expiry_secs, ledger::NO_EXPIRY);
    assert!(!kinds(&world, "spent").await.contains(&EntryKind::Expire));
    assert!(hold(&world, "spent", 5).await.is_ok());
}

#[tokio::test]
async fn an_expiry_planned_before_a_reserve_committed_is_refused_and_replanned() {
    let world = World::new().await;
    // Lot A (10) expires a minute from now, lot B (10) never. The expiry runs as of A's
    // expiry; the reserve commits before it, while A is still valid by the reserve's clock.
    let due = clock::now_secs() + 60;
    world.grant("race", 10, Some(due)).await;
    world.grant("race", 10, None).await;
    let read = world.account("race").await;
    hold(&world, "race", 15).await.expect("the reserve commits");
    let stale = ledger::expire_as_read(world.ddb(), world.table(), "race", &read, due)
        .await
        .unwrap();
    assert_eq!(stale, None, "the plan made before the reserve is refused");
    let after_reserve = world.assert_conserved("race").await;
    assert_eq!(
        (
            after_reserve.available,
            after_reserve.held,
            after_reserve.expired
        ),
        (5, 15, 0),
        "the refused expiry wrote nothing"
    );
    // Re-read and re-planned, the expiry keeps what backs the hold: nothing is overdrawn.
    let lost = ledger::expire_due(world.ddb(), world.table(), "race", due)
        .await
        .unwrap();
    let account = world.assert_conserved("race").await;
    assert!(account.available >= 0, "overdrawn: {account:?}");
    assert_eq!(account.held, 15);
    assert_eq!(account.expired, lost);
    assert_eq!(account.available + account.expired, 5, "{account:?}");
}

#[tokio::test]
async fn a_release_we_caused_gives_the_expired_share_back_in_a_grace_lot() {
    let world = World::new().await;
    let now = clock::now_secs();
    world.grant("ours", 10, Some(now + 60)).await;
    let session = hold(&world, "ours", 8).await.unwrap();
    ledger::expire_due(world.ddb(), world.table(), "ours", now + 61)
        .await
        .unwrap();
    let settled = ledger::settle(
        world.ddb(),
        world.table(),
        "ours",
        &session,
        0,
        ExpiredShare::Refunded,
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(
        settled,
        Settlement::Settled {
            captured: 0,
            released: 0,
            expired: 0,
            refunded: 8
        }
    );
    let account = world.assert_conserved("ours").await;
    assert_eq!(
        (account.available, account.held, account.expired),
        (8, 0, 2),
        "only the unheld part expired"
    );
    let grace = &account.lots[&ledger::grace_lot_id(&session)];
    assert_eq!(
        (grace.amount, grace.remaining, grace.expired),
        (8, 8, false)
    );
    let expires = grace.expires_at_secs.unwrap();
    assert!((expires - clock::now_secs() - ledger::GRACE_LOT_SECS).abs() < 60);
    assert_eq!(account.lots.len(), 1, "the spent expired lot is gone");
    assert_eq!(
        account.next_expiry_secs, expires,
        "the sweeper expires it in time"
    );
    let kinds = kinds(&world, "ours").await;
    assert_eq!(kinds.len(), 4, "grant, hold, expire, refund: {kinds:?}");
    assert!(kinds.contains(&EntryKind::Refund) && !kinds.contains(&EntryKind::Release));
    // The credits can be spent again.
    hold(&world, "ours", 8).await.unwrap();
    world.assert_conserved("ours").await;
}

#[tokio::test]
async fn more_lots_than_one_transaction_can_hold_expire_together() {
    let world = World::new().await;
    let now = clock::now_secs();
    for _ in 0..250 {
        world.grant("many", 1, Some(now + 60)).await;
    }
    world.grant("many", 10, None).await;
    // Holds made before the expiry keep the credits of the lots that back them.
    let three = hold(&world, "many", 3).await.unwrap();
    hold(&world, "many", 2).await.unwrap();
    let lost = ledger::expire_due(world.ddb(), world.table(), "many", now + 61)
        .await
        .unwrap();
    assert_eq!(lost, 245);
    let account = world.assert_conserved("many").await;
    assert_eq!(
        (account.available, account.held, account.expired),
        (10, 5, 245)
    );
    assert_eq!(account.next_expiry_secs, ledger::NO_EXPIRY);
    assert_eq!(
        account.lots.len(),
        6,
        "the lot that never expires and 5 backing the holds"
    );
    let expiries = kinds(&world, "many")
        .await
        .into_iter()
        .filter(|k| *k == EntryKind::Expire)
        .count();
    assert_eq!(expiries, 245, "one entry per lot that lost credits");
    settle(&world, "many", &three, 3).await;
    let account = world.assert_conserved("many").await;
    assert_eq!((account.captured, account.lots.len()), (3, 3));
}
