//! The limiter's rules as scripted sequences on a manual clock (exact counts, no sleeping),
//! run against both homes: the local limiter, and the Redis limiter on the real server at
//! 127.0.0.1:6379 with its scripts on the same manual clock. Same sequence, same numbers.

use super::directory::{Tenant, Tier};
use super::limiter::*;
use super::redis::tests::{redis_limiter, KeysGuard};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub(crate) fn tier() -> Tier {
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

pub(crate) fn tenant(terms: Tier) -> Tenant {
    Tenant {
        id: "t1".into(),
        name: "T1".into(),
        tier: "aiss".into(),
        class: 0,
        grant: "g".into(),
        terms,
    }
}

pub(crate) fn ask(tokens: u64) -> Ask {
    Ask {
        tokens,
        worst_charge: 0,
        month: 202611,
    }
}

/// One home of the limits, on a clock the test moves.
pub(crate) struct Home {
    pub lim: Arc<dyn Limiter>,
    pub clock: Arc<ManualClock>,
    _keys: Option<KeysGuard>,
}

impl Home {
    fn local() -> Self {
        let clock = Arc::new(ManualClock::default());
        Home {
            lim: Arc::new(LocalLimiter::new(clock.clone())),
            clock,
            _keys: None,
        }
    }

    fn redis() -> Self {
        let clock = Arc::new(ManualClock::default());
        let keys = KeysGuard::new();
        let lim = redis_limiter(&keys, clock.clone(), |_| {});
        Home {
            lim: Arc::new(lim),
            clock,
            _keys: Some(keys),
        }
    }

    /// Settles, and waits until the settlement is booked (a shared home books it in the
    /// background).
    async fn settle(&self, t: &Tenant, r: Reservation, used: Usage) {
        self.lim.settle(t, r, used);
        self.lim.flush().await;
    }
}

/// Runs each sequence against each home: `local::name` and `redis::name`.
macro_rules! both_homes {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                super::sequences::$name(super::Home::local()).await;
            })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                super::sequences::$name(super::Home::redis()).await;
            })*
        }
    };
}

both_homes!(
    admits_exactly_the_request_burst_then_429s_with_the_refill_wait,
    refill_admits_one_more_request_after_its_interval,
    denial_by_one_limit_spends_nothing_from_the_others,
    token_reservation_is_refunded_down_to_what_was_used,
    concurrent_reservations_never_exceed_the_token_budget,
    more_tokens_than_the_burst_is_never_admissible,
    budget_holds_the_worst_case_and_commits_the_actual_charge,
    a_new_month_starts_with_an_empty_budget,
    a_dropped_admission_releases_concurrency_and_tokens,
);

mod sequences {
    use super::*;

    pub async fn admits_exactly_the_request_burst_then_429s_with_the_refill_wait(h: Home) {
        let t = tenant(tier());
        for _ in 0..6 {
            h.lim.admit(&t, ask(1)).await.expect("within burst");
        }
        let denied = h.lim.admit(&t, ask(1)).await.unwrap_err();
        assert_eq!(denied.kind, LimitKind::Requests);
        assert_eq!(denied.wait, Duration::from_secs(10));
        assert_eq!(denied.status.remaining_requests, 0);
    }

    pub async fn refill_admits_one_more_request_after_its_interval(h: Home) {
        let t = tenant(tier());
        for _ in 0..6 {
            h.lim.admit(&t, ask(1)).await.expect("burst");
        }
        h.clock.advance(Duration::from_millis(9_999));
        assert!(h.lim.admit(&t, ask(1)).await.is_err());
        h.clock.advance(Duration::from_millis(1));
        assert!(h.lim.admit(&t, ask(1)).await.is_ok());
    }

    pub async fn denial_by_one_limit_spends_nothing_from_the_others(h: Home) {
        let mut terms = tier();
        terms.max_concurrent = 1;
        let t = tenant(terms);
        let (_r, first) = h.lim.admit(&t, ask(100)).await.expect("first");
        let denied = h.lim.admit(&t, ask(100)).await.unwrap_err();
        assert_eq!(denied.kind, LimitKind::Concurrency);
        assert_eq!(denied.status, first);
        assert_eq!(h.lim.status(&t), first);
    }

    pub async fn token_reservation_is_refunded_down_to_what_was_used(h: Home) {
        let t = tenant(tier());
        let (r, status) = h.lim.admit(&t, ask(600)).await.expect("admit");
        assert_eq!(status.remaining_tokens, 400);
        let used = Usage {
            tokens: 150,
            charge: 0,
        };
        h.settle(&t, r, used).await;
        assert_eq!(h.lim.status(&t).remaining_tokens, 850);
        assert_eq!(h.lim.in_flight("t1"), 0);
    }

    pub async fn concurrent_reservations_never_exceed_the_token_budget(h: Home) {
        let mut terms = tier();
        terms.requests_per_minute = 1000;
        let t = Arc::new(tenant(terms));
        // 20 tasks each ask for 120 tokens of a 1000-token bucket at the same instant:
        // exactly 8 fit, whatever the interleaving.
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (lim, t) = (h.lim.clone(), t.clone());
                tokio::spawn(async move { lim.admit(&t, ask(120)).await.is_ok() })
            })
            .collect();
        let mut admitted = 0;
        for task in tasks {
            admitted += usize::from(task.await.expect("task"));
        }
        assert_eq!(admitted, 8);
        let denied = h.lim.admit(&t, ask(120)).await.unwrap_err();
        assert_eq!(denied.status.remaining_tokens, 1000 - 8 * 120);
    }

    pub async fn more_tokens_than_the_burst_is_never_admissible(h: Home) {
        let denied = h.lim.admit(&tenant(tier()), ask(1001)).await.unwrap_err();
        assert_eq!(denied.kind, LimitKind::TooLarge);
    }

    pub async fn budget_holds_the_worst_case_and_commits_the_actual_charge(h: Home) {
        let mut terms = tier();
        terms.monthly_budget_hkd = Some(1.0);
        let t = tenant(terms);
        let worst = |charge| Ask {
            worst_charge: charge,
            ..ask(1)
        };
        let (r, _) = h.lim.admit(&t, worst(600_000)).await.expect("first hold");
        let denied = h.lim.admit(&t, worst(600_000)).await.unwrap_err();
        assert_eq!(denied.kind, LimitKind::Budget);
        let used = Usage {
            tokens: 1,
            charge: 100_000,
        };
        h.settle(&t, r, used).await;
        // 0.1 HKD spent: 0.9 HKD left.
        assert!(h.lim.admit(&t, worst(900_000)).await.is_ok());
        let denied = h.lim.admit(&t, worst(1)).await.unwrap_err();
        assert_eq!(denied.kind, LimitKind::Budget);
    }

    pub async fn a_new_month_starts_with_an_empty_budget(h: Home) {
        let mut terms = tier();
        terms.monthly_budget_hkd = Some(1.0);
        let t = tenant(terms);
        let spent = HashMap::from([("t1".to_string(), 1_000_000)]);
        h.lim.restore_spent(202611, &spent);
        let november = Ask {
            worst_charge: 1,
            ..ask(1)
        };
        let denied = h.lim.admit(&t, november).await.unwrap_err();
        assert_eq!(denied.kind, LimitKind::Budget);
        let december = Ask {
            month: 202612,
            ..november
        };
        assert!(h.lim.admit(&t, december).await.is_ok());
    }

    pub async fn a_dropped_admission_releases_concurrency_and_tokens(h: Home) {
        let t = Arc::new(tenant(tier()));
        let (r, status) = h.lim.admit(&t, ask(500)).await.expect("admit");
        let admission = crate::tenancy::Admission::new(h.lim.clone(), t.clone(), r, status);
        assert_eq!(h.lim.in_flight("t1"), 1);
        drop(admission);
        h.lim.flush().await;
        assert_eq!(h.lim.in_flight("t1"), 0);
        assert_eq!(h.lim.status(&t).remaining_tokens, 1000);
    }
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
