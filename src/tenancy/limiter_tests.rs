//! The limiter's rules on a manual clock: exact counts, no sleeping.

use super::directory::{Tenant, Tier};
use super::limiter::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

fn tier() -> Tier {
    Tier {
        requests_per_minute: 6,
        tokens_per_minute: 1000,
        burst_requests: 0,
        burst_tokens: 0,
        max_concurrent: 100,
        weight: 1.0,
        subsidy_rate: 0.7,
        monthly_budget_hkd: None,
        models: Vec::new(),
        dedicated: false,
        prefix_cache: Default::default(),
    }
}

fn tenant(terms: Tier) -> Tenant {
    Tenant {
        id: "t1".into(),
        name: "T1".into(),
        tier: "aiss".into(),
        class: 0,
        grant: "g".into(),
        terms,
    }
}

fn limiter() -> (Arc<ManualClock>, LocalLimiter) {
    let clock = Arc::new(ManualClock::default());
    (clock.clone(), LocalLimiter::new(clock))
}

fn ask(tokens: u64) -> Ask {
    Ask {
        tokens,
        worst_charge: 0,
        month: 202611,
    }
}

#[test]
fn admits_exactly_the_request_burst_then_429s_with_the_refill_wait() {
    let (_, lim) = limiter();
    let t = tenant(tier());
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(lim.admit(&t, ask(1)).expect("within burst").0);
    }
    let denied = lim.admit(&t, ask(1)).unwrap_err();
    assert_eq!(denied.kind, LimitKind::Requests);
    assert_eq!(denied.wait, Duration::from_secs(10));
    assert_eq!(denied.status.remaining_requests, 0);
}

#[test]
fn refill_admits_one_more_request_after_its_interval() {
    let (clock, lim) = limiter();
    let t = tenant(tier());
    for _ in 0..6 {
        lim.admit(&t, ask(1)).expect("burst");
    }
    clock.advance(Duration::from_millis(9_999));
    assert!(lim.admit(&t, ask(1)).is_err());
    clock.advance(Duration::from_millis(1));
    assert!(lim.admit(&t, ask(1)).is_ok());
}

#[test]
fn denial_by_one_limit_spends_nothing_from_the_others() {
    let (_, lim) = limiter();
    let mut terms = tier();
    terms.max_concurrent = 1;
    let t = tenant(terms);
    let (_r, _) = lim.admit(&t, ask(100)).expect("first");
    let before = lim.status(&t);
    let denied = lim.admit(&t, ask(100)).unwrap_err();
    assert_eq!(denied.kind, LimitKind::Concurrency);
    assert_eq!(lim.status(&t), before);
}

#[test]
fn token_reservation_is_refunded_down_to_what_was_used() {
    let (_, lim) = limiter();
    let t = tenant(tier());
    let (r, status) = lim.admit(&t, ask(600)).expect("admit");
    assert_eq!(status.remaining_tokens, 400);
    lim.settle(
        &t,
        r,
        Usage {
            tokens: 150,
            charge: 0,
        },
    );
    assert_eq!(lim.status(&t).remaining_tokens, 850);
    assert_eq!(lim.in_flight("t1"), 0);
}

#[test]
fn concurrent_reservations_never_exceed_the_token_budget() {
    let (_, lim) = limiter();
    let lim = Arc::new(lim);
    let mut terms = tier();
    terms.requests_per_minute = 1000;
    let t = Arc::new(tenant(terms));
    // 20 threads each ask for 120 tokens of a 1000-token bucket at the same instant: exactly
    // 8 fit, whatever the interleaving.
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let (lim, t) = (lim.clone(), t.clone());
            std::thread::spawn(move || lim.admit(&t, ask(120)).is_ok())
        })
        .collect();
    let admitted = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .filter(|&ok| ok)
        .count();
    assert_eq!(admitted, 8);
    assert_eq!(lim.status(&t).remaining_tokens, 1000 - 8 * 120);
}

#[test]
fn more_tokens_than_the_burst_is_never_admissible() {
    let (_, lim) = limiter();
    let denied = lim.admit(&tenant(tier()), ask(1001)).unwrap_err();
    assert_eq!(denied.kind, LimitKind::TooLarge);
}

#[test]
fn budget_holds_the_worst_case_and_commits_the_actual_charge() {
    let (_, lim) = limiter();
    let mut terms = tier();
    terms.monthly_budget_hkd = Some(1.0);
    let t = tenant(terms);
    let worst = |charge| Ask {
        worst_charge: charge,
        ..ask(1)
    };
    let (r, _) = lim.admit(&t, worst(600_000)).expect("first hold");
    assert_eq!(
        lim.admit(&t, worst(600_000)).unwrap_err().kind,
        LimitKind::Budget
    );
    lim.settle(
        &t,
        r,
        Usage {
            tokens: 1,
            charge: 100_000,
        },
    );
    // 0.1 HKD spent: 0.9 HKD left.
    assert!(lim.admit(&t, worst(900_000)).is_ok());
    assert_eq!(lim.admit(&t, worst(1)).unwrap_err().kind, LimitKind::Budget);
}

#[test]
fn a_new_month_starts_with_an_empty_budget() {
    let (_, lim) = limiter();
    let mut terms = tier();
    terms.monthly_budget_hkd = Some(1.0);
    let t = tenant(terms);
    lim.restore_spent(202611, &HashMap::from([("t1".to_string(), 1_000_000)]));
    assert_eq!(
        lim.admit(
            &t,
            Ask {
                worst_charge: 1,
                ..ask(1)
            }
        )
        .unwrap_err()
        .kind,
        LimitKind::Budget
    );
    let december = Ask {
        worst_charge: 1,
        month: 202612,
        ..ask(1)
    };
    assert!(lim.admit(&t, december).is_ok());
}

#[test]
fn a_dropped_admission_releases_concurrency_and_tokens() {
    let (_, lim) = limiter();
    let lim: Arc<dyn Limiter> = Arc::new(lim);
    let t = Arc::new(tenant(tier()));
    let (r, status) = lim.admit(&t, ask(500)).expect("admit");
    let admission = super::Admission::new(lim.clone(), t.clone(), r, status);
    assert_eq!(lim.in_flight("t1"), 1);
    drop(admission);
    assert_eq!(lim.in_flight("t1"), 0);
    assert_eq!(lim.status(&t).remaining_tokens, 1000);
}

#[test]
fn months_follow_the_utc_calendar() {
    use super::month_of;
    let day = 86_400_000i64;
    assert_eq!(month_of(0), 197001);
    // 2026-11-30 23:59:59.999 and the next millisecond.
    let dec1_2026 = 20_788 * day;
    assert_eq!(month_of(dec1_2026 - 1), 202611);
    assert_eq!(month_of(dec1_2026), 202612);
    // 2024-02-29 exists (leap year), 2024-03-01 is the next month.
    assert_eq!(month_of(19_782 * day), 202402);
    assert_eq!(month_of(19_783 * day), 202403);
}
