//! The Redis home against the real server at 127.0.0.1:6379 (`.ci/run` starts it): what only
//! a shared home has (several gateways, leases, outages, retried settlements). The rules
//! shared with the local home are tested on both in `limiter_tests`. Each test keeps its keys
//! under a prefix of its own, deleted at its end (and every key has a TTL besides).

use super::*;
use crate::config::{LimiterBackend, OnUnavailable};
use crate::tenancy::limiter::ManualClock;
use crate::tenancy::limiter_tests::{ask, tenant, tier};
use std::sync::atomic::AtomicUsize;

pub(crate) const REDIS_URL: &str = "redis://127.0.0.1:6379/0";

/// A key prefix of one test; dropping it deletes the test's keys.
pub(crate) struct KeysGuard(pub String);

impl KeysGuard {
    pub(crate) fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        KeysGuard(format!("tgtest:{}:{n}:", std::process::id()))
    }
}

impl Drop for KeysGuard {
    fn drop(&mut self) {
        let Ok(mut conn) = redis::Client::open(REDIS_URL).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

/// A Redis limiter under `keys`, its scripts on `clock`; `tweak` adjusts its config.
pub(crate) fn redis_limiter(
    keys: &KeysGuard,
    clock: Arc<ManualClock>,
    tweak: impl FnOnce(&mut LimiterConfig),
) -> RedisLimiter {
    let mut config = LimiterConfig {
        backend: LimiterBackend::Redis,
        url: REDIS_URL.into(),
        key_prefix: keys.0.clone(),
        ..LimiterConfig::default()
    };
    tweak(&mut config);
    let script_clock: Arc<dyn Clock> = clock.clone();
    RedisLimiter::start_with(&config, Duration::from_secs(60), clock, Some(script_clock))
        .expect("limiter")
}

fn roomy() -> Tenant {
    let mut terms = tier();
    terms.requests_per_minute = 1000;
    terms.max_concurrent = 1;
    tenant(terms)
}

#[tokio::test]
async fn two_gateways_share_one_request_limit_exactly() {
    let keys = KeysGuard::new();
    let clock = Arc::new(ManualClock::default());
    let a = redis_limiter(&keys, clock.clone(), |_| {});
    let b = redis_limiter(&keys, clock, |_| {});
    let t = tenant(tier());
    let mut admitted = 0;
    for i in 0..10 {
        let gateway = if i % 2 == 0 { &a } else { &b };
        admitted += usize::from(gateway.admit(&t, ask(1)).await.is_ok());
    }
    assert_eq!(admitted, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_under_concurrent_load_fill_the_token_bucket_exactly() {
    let keys = KeysGuard::new();
    let clock = Arc::new(ManualClock::default());
    let gateways: [Arc<RedisLimiter>; 2] =
        [0, 1].map(|_| Arc::new(redis_limiter(&keys, clock.clone(), |_| {})));
    let mut terms = tier();
    terms.requests_per_minute = 1000;
    let t = Arc::new(tenant(terms));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (lim, t) = (gateways[i % 2].clone(), t.clone());
            tokio::spawn(async move { lim.admit(&t, ask(120)).await.is_ok() })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.expect("task"));
    }
    assert_eq!(admitted, 8);
}

#[tokio::test]
async fn a_vanished_gateway_frees_its_leases_within_the_ttl() {
    let keys = KeysGuard::new();
    let clock = Arc::new(ManualClock::default());
    let t = roomy();
    let a = redis_limiter(&keys, clock.clone(), |c| c.lease_ttl_secs = 2);
    let b = redis_limiter(&keys, clock.clone(), |c| c.lease_ttl_secs = 2);
    let (_held_forever, _) = a.admit(&t, ask(1)).await.expect("a admits");
    drop(a);
    assert_eq!(
        b.admit(&t, ask(1)).await.unwrap_err().kind,
        LimitKind::Concurrency
    );
    clock.advance(Duration::from_millis(1_999));
    assert_eq!(
        b.admit(&t, ask(1)).await.unwrap_err().kind,
        LimitKind::Concurrency
    );
    clock.advance(Duration::from_millis(1));
    assert!(b.admit(&t, ask(1)).await.is_ok());
}

#[tokio::test]
async fn a_running_request_keeps_its_lease_past_the_ttl_by_renewal() {
    let keys = KeysGuard::new();
    let clock = Arc::new(ManualClock::default());
    let t = roomy();
    let a = redis_limiter(&keys, clock.clone(), |c| c.lease_ttl_secs = 3);
    let b = redis_limiter(&keys, clock.clone(), |c| c.lease_ttl_secs = 3);
    let (_running, _) = a.admit(&t, ask(1)).await.expect("a admits");
    clock.advance(Duration::from_secs(2));
    a.renew_now().await;
    clock.advance(Duration::from_secs(2));
    assert_eq!(
        b.admit(&t, ask(1)).await.unwrap_err().kind,
        LimitKind::Concurrency
    );
}

#[tokio::test]
async fn a_settlement_retried_after_a_timeout_is_booked_once() {
    let keys = KeysGuard::new();
    let lim = redis_limiter(&keys, Arc::new(ManualClock::default()), |_| {});
    let mut terms = tier();
    terms.monthly_budget_hkd = Some(1.0);
    let t = tenant(terms);
    let worst = |charge, tokens| Ask {
        worst_charge: charge,
        ..ask(tokens)
    };
    let (r, _) = lim.admit(&t, worst(600_000, 500)).await.expect("admit");
    let used = Usage {
        tokens: 100,
        charge: 400_000,
    };
    let call = lim
        .shared
        .settle_call(&t, &r, used, &scripts::lease_name(r.lease.expect("lease")));
    // The first try ran but its answer was lost; the retry must change nothing.
    let first = lim.call(call.clone()).await.expect("settle");
    assert_eq!(first.code, 1);
    let again = lim.call(call).await.expect("retry");
    assert_eq!(again.code, 0);
    // 400 unused tokens given back once: 100 tokens of a 1000/min bucket are still ahead (6 s).
    assert_eq!(again.tokens_ahead_us, 6_000_000);
    // 0.4 HKD spent once: 0.6 left.
    assert!(lim.admit(&t, worst(600_000, 1)).await.is_ok());
    assert_eq!(
        lim.admit(&t, worst(1, 1)).await.unwrap_err().kind,
        LimitKind::Budget
    );
}

#[tokio::test]
async fn an_admission_that_runs_after_its_cancellation_is_refused() {
    let keys = KeysGuard::new();
    let lim = redis_limiter(&keys, Arc::new(ManualClock::default()), |_| {});
    let t = tenant(tier());
    let lease = scripts::lease_name(7);
    let r = Reservation {
        tokens: 1,
        hold: 0,
        month: 202611,
        lease: Some(7),
    };
    lim.call(lim.shared.settle_call(&t, &r, Usage::default(), &lease))
        .await
        .expect("cancel");
    let late = lim
        .call(lim.shared.admit_call(&t, ask(1), &lease))
        .await
        .expect("admit");
    assert_eq!(late.code, 6);
    assert_eq!(late.leases, 0);
}

fn unreachable(policy: OnUnavailable, gateways: u32) -> (KeysGuard, RedisLimiter) {
    let keys = KeysGuard::new();
    let lim = redis_limiter(&keys, Arc::new(ManualClock::default()), |c| {
        // Nothing listens on port 1: refused at once.
        c.url = "redis://127.0.0.1:1/0".into();
        c.on_unavailable = policy;
        c.gateways = gateways;
    });
    (keys, lim)
}

#[tokio::test]
async fn unreachable_redis_with_reject_answers_unavailable() {
    let (_keys, lim) = unreachable(OnUnavailable::Reject, 2);
    let denied = lim.admit(&tenant(tier()), ask(1)).await.unwrap_err();
    assert_eq!(denied.kind, LimitKind::Unavailable);
    assert!(denied.wait >= Duration::from_secs(1));
}

#[tokio::test]
async fn unreachable_redis_with_local_share_admits_this_gateways_share() {
    let (_keys, lim) = unreachable(OnUnavailable::LocalShare, 4);
    let t = tenant(tier());
    // 6 requests a minute over 4 gateways: ceil(6 / 4) = 2 here.
    assert!(lim.admit(&t, ask(1)).await.is_ok());
    assert!(lim.admit(&t, ask(1)).await.is_ok());
    assert_eq!(
        lim.admit(&t, ask(1)).await.unwrap_err().kind,
        LimitKind::Requests
    );
}

#[tokio::test]
async fn unreachable_redis_fails_closed_for_a_money_budget() {
    let (_keys, lim) = unreachable(OnUnavailable::LocalShare, 2);
    let mut terms = tier();
    terms.monthly_budget_hkd = Some(100.0);
    let denied = lim.admit(&tenant(terms), ask(1)).await.unwrap_err();
    assert_eq!(denied.kind, LimitKind::Unavailable);
}

#[tokio::test]
async fn a_request_too_large_for_the_local_share_only_is_told_to_retry() {
    let (_keys, lim) = unreachable(OnUnavailable::LocalShare, 2);
    let denied = lim.admit(&tenant(tier()), ask(600)).await.unwrap_err();
    assert_eq!(denied.kind, LimitKind::Unavailable);
}

/// A server that speaks RESP but answers every script with `answer`.
async fn fake_redis(answer: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = socket.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    // One answer per command in the chunk (each starts with `*`).
                    let text = String::from_utf8_lossy(&buf[..n]).to_uppercase();
                    let mut out = Vec::new();
                    for command in text.split('*').filter(|c| c.contains("\r\n$")) {
                        let script = command.contains("EVAL");
                        out.extend_from_slice(if script { answer } else { b"+OK\r\n" });
                    }
                    if socket.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("redis://{addr}/0")
}

async fn against_fake(answer: &'static [u8]) -> Denied {
    let url = fake_redis(answer).await;
    let keys = KeysGuard::new();
    let lim = redis_limiter(&keys, Arc::new(ManualClock::default()), |c| {
        c.url = url;
        c.on_unavailable = OnUnavailable::LocalShare;
    });
    lim.admit(&tenant(tier()), ask(1)).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_answer_is_unavailable_never_an_admission() {
    assert_eq!(against_fake(b":42\r\n").await.kind, LimitKind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_error_is_unavailable_never_an_admission() {
    let denied = against_fake(b"-ERR user_script:1: boom\r\n").await;
    assert_eq!(denied.kind, LimitKind::Unavailable);
}

/// A TCP relay to the real Redis that the test can cut, as if Redis stopped.
struct Relay {
    url: String,
    tasks: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Relay {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("redis://{}/0", listener.local_addr().expect("addr"));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect("127.0.0.1:6379").await?;
                    tokio::io::copy_bidirectional(&mut client, &mut server).await
                });
                conns.lock().unwrap().push(relay.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Relay { url, tasks }
    }

    /// Closes every connection and the listener: Redis is gone for the limiter.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopping_mid_run_hands_over_to_the_local_share() {
    let relay = Relay::start().await;
    let keys = KeysGuard::new();
    let lim = redis_limiter(&keys, Arc::new(ManualClock::default()), |c| {
        c.url = relay.url.clone();
        c.on_unavailable = OnUnavailable::LocalShare;
        c.gateways = 3;
    });
    let t = tenant(tier());
    // Four of six through Redis, then Redis goes away.
    for _ in 0..4 {
        let (r, _) = lim.admit(&t, ask(1)).await.expect("via Redis");
        assert!(r.lease.is_some());
    }
    relay.cut();
    // ceil(6 / 3) = 2 more from this gateway's share, then its local bucket is empty.
    let mut local = 0;
    for _ in 0..4 {
        match lim.admit(&t, ask(1)).await {
            Ok((r, _)) => {
                assert!(r.lease.is_none(), "admitted locally");
                local += 1;
            }
            Err(d) => assert_eq!(d.kind, LimitKind::Requests),
        }
    }
    assert_eq!(local, 2);
}
