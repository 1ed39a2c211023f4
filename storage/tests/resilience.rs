#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Resilience wrappers and zones over scripted backends, under paused tokio
//! time: every duration asserted here is virtual and exact (to the timer's
//! 1 ms resolution).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use des_storage::resilience::{
    BreakerConfig, BreakerState, BreakerStore, CircuitBreaker, HedgedStore, Op, RateLimit,
    RateLimitedStore, RateLimiter, ReplicatedStore, RetryPolicy, RetryStore, ScriptedStore, Step,
};
use des_storage::zones::{S3Location, Zones, ZonesFile};
use des_storage::{ErrorKind, GetOptions, ObjectStore, PutMode, PutOptions, Result};
use tokio::time::Instant;

const MS: Duration = Duration::from_millis(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn seeded(name: &str) -> ScriptedStore {
    let s = ScriptedStore::new(name);
    let seeded = s
        .memory()
        .put("k", Bytes::from_static(b"data"), PutOptions::default())
        .await;
    assert!(seeded.is_ok(), "{seeded:?}");
    s
}

async fn read(store: &dyn ObjectStore) -> Result<Bytes> {
    store.get("k", GetOptions::default()).await?.bytes().await
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: ms(100),
        max_delay: ms(1000),
        attempt_timeout: None,
        deadline: None,
    }
}

fn retry(s: &ScriptedStore, p: RetryPolicy) -> RetryStore<ScriptedStore> {
    RetryStore::new(Arc::new(s.clone()), p)
}

fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

// ---- retry ----

#[tokio::test(start_paused = true)]
async fn retry_recovers_from_transient_errors() {
    let s = seeded("p").await;
    s.fail_next(1, ErrorKind::Unavailable);
    s.fail_next(1, ErrorKind::Throttled);
    s.fail_next(1, ErrorKind::Timeout);
    let r = retry(&s, policy(4));
    assert_eq!(read(&r).await.unwrap(), "data");
    assert_eq!((s.calls(Op::Get), r.retries()), (4, 3));
}

#[tokio::test(start_paused = true)]
async fn retry_stops_after_max_attempts() {
    let s = seeded("p").await;
    s.set_down(Some(ErrorKind::Unavailable));
    let r = retry(&s, policy(3));
    assert_eq!(
        r.head("k").await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    assert_eq!((s.calls(Op::Head), r.retries()), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn retry_backoff_is_full_jitter_within_the_cap() {
    let p = policy(6);
    let mut all = Vec::new();
    for _ in 0..30 {
        let s = seeded("p").await;
        s.fail_next(5, ErrorKind::Unavailable);
        retry(&s, p.clone()).head("k").await.unwrap();
        let g = gaps(&s.call_times(Op::Head));
        assert_eq!(g.len(), 5);
        for (i, gap) in g.iter().enumerate() {
            let cap = p.backoff_cap(i as u32);
            assert!(*gap <= cap + MS, "retry {i}: slept {gap:?}, cap {cap:?}");
            all.push((*gap, cap));
        }
    }
    // Jittered, not a fixed schedule: sleeps land in both halves of [0, cap].
    assert!(all.iter().any(|(g, cap)| *g < *cap / 2));
    assert!(all.iter().any(|(g, cap)| *g > *cap / 2 + MS));
    let caps: Vec<u128> = (0..5).map(|i| p.backoff_cap(i).as_millis()).collect();
    assert_eq!(caps, [100, 200, 400, 800, 1000]);
}

#[tokio::test(start_paused = true)]
async fn retry_leaves_answers_alone() {
    for kind in [
        ErrorKind::NotFound,
        ErrorKind::Invalid,
        ErrorKind::PreconditionFailed,
        ErrorKind::Unauthorized,
        ErrorKind::Corrupt,
        ErrorKind::Other,
    ] {
        let s = seeded("p").await;
        s.fail_next(1, kind);
        let r = retry(&s, policy(5));
        assert_eq!(r.head("k").await.unwrap_err().kind(), kind);
        assert_eq!(
            (s.calls(Op::Head), r.retries()),
            (1, 0),
            "{kind:?} was retried"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_honours_retry_after() {
    let s = seeded("p").await;
    s.push(Step::fail(ErrorKind::Throttled).retry_after(Duration::from_secs(3)));
    s.push(Step::fail(ErrorKind::Unavailable).retry_after(Duration::from_secs(2)));
    let r = retry(&s, policy(4));
    assert_eq!(read(&r).await.unwrap(), "data");
    let g = gaps(&s.call_times(Op::Get));
    // Backoff caps are 100 and 200 ms; the server's wishes dominate.
    assert!(
        g[0] >= Duration::from_secs(3) && g[0] <= Duration::from_secs(3) + MS,
        "{g:?}"
    );
    assert!(
        g[1] >= Duration::from_secs(2) && g[1] <= Duration::from_secs(2) + MS,
        "{g:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_times_out_slow_attempts() {
    let s = seeded("p").await;
    s.push(Step::delay(Duration::from_secs(60)));
    let r = retry(
        &s,
        RetryPolicy {
            attempt_timeout: Some(Duration::from_secs(1)),
            ..policy(3)
        },
    );
    let start = Instant::now();
    assert_eq!(read(&r).await.unwrap(), "data");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took <= Duration::from_secs(1) + ms(100) + MS,
        "{took:?}"
    );
    assert_eq!((s.calls(Op::Get), r.retries()), (2, 1));

    s.set_latency(Duration::from_secs(60));
    let err = r.head("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.to_string().contains("attempt time-out"), "{err}");
    assert_eq!(s.calls(Op::Head), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_respects_the_overall_deadline() {
    let s = seeded("p").await;
    s.set_down(Some(ErrorKind::Unavailable));
    let p = RetryPolicy {
        max_attempts: 1000,
        base_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(1),
        attempt_timeout: None,
        deadline: Some(Duration::from_secs(5)),
    };
    let start = Instant::now();
    assert_eq!(
        retry(&s, p.clone()).head("k").await.unwrap_err().kind(),
        ErrorKind::Unavailable
    );
    assert!(
        start.elapsed() <= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert!(s.calls(Op::Head) >= 2 && s.calls(Op::Head) < 1000);

    // A slow attempt is cut short by what is left of the deadline.
    let slow = seeded("slow").await;
    slow.set_latency(Duration::from_secs(60));
    let p = RetryPolicy {
        attempt_timeout: Some(Duration::from_secs(4)),
        ..p
    };
    let start = Instant::now();
    let err = retry(&slow, p).head("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.to_string().contains("deadline"), "{err}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took <= Duration::from_secs(5) + MS,
        "{took:?}"
    );
    assert_eq!(slow.calls(Op::Head), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_covers_writes_but_not_streams() {
    let s = seeded("p").await;
    let r = retry(&s, policy(3));
    s.fail_next(1, ErrorKind::Unavailable);
    r.put("w", Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap();
    s.fail_next(1, ErrorKind::Timeout);
    r.delete("w").await.unwrap();
    s.fail_next(1, ErrorKind::Throttled);
    assert_eq!(r.list("", None).await.unwrap().objects.len(), 1);
    assert_eq!(
        (s.calls(Op::Put), s.calls(Op::Delete), s.calls(Op::List)),
        (2, 2, 2)
    );
    s.fail_next(1, ErrorKind::Unavailable);
    let err = r
        .put_writer("big", PutOptions::default())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(s.calls(Op::PutWriter), 1, "a stream is never replayed");
    assert_eq!(r.retries(), 3);
}

// ---- circuit breaker ----

fn breaker(cfg: BreakerConfig) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new("test", cfg))
}

fn guarded(s: &ScriptedStore, b: &Arc<CircuitBreaker>) -> BreakerStore<ScriptedStore> {
    BreakerStore::new(Arc::new(s.clone()), Arc::clone(b))
}

fn consecutive(n: u32) -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: n,
        min_requests: 1000,
        cool_down: Duration::from_secs(10),
        ..BreakerConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_after_consecutive_failures_and_fails_fast() {
    let s = seeded("p").await;
    let b = breaker(consecutive(3));
    let store = guarded(&s, &b);
    s.fail_next(2, ErrorKind::Unavailable);
    for _ in 0..2 {
        assert!(store.head("k").await.is_err());
    }
    store.head("k").await.unwrap();
    assert_eq!(b.state(), BreakerState::Closed, "a success resets the run");
    s.fail_next(3, ErrorKind::Timeout);
    for _ in 0..3 {
        assert!(store.head("k").await.is_err());
    }
    assert_eq!((b.state(), b.gauge()), (BreakerState::Open, 2));

    let calls = s.total_calls();
    tokio::time::advance(Duration::from_secs(4)).await;
    let err = store.head("k").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(
        err.retry_after(),
        Some(Duration::from_secs(6)),
        "the remaining cool-down"
    );
    assert!(read(&store).await.is_err());
    assert!(
        store
            .put("x", Bytes::new(), PutOptions::default())
            .await
            .is_err()
    );
    assert_eq!(s.total_calls(), calls, "the inner store was not touched");
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_on_error_rate() {
    let s = seeded("p").await;
    let cfg = BreakerConfig {
        consecutive_failures: 0,
        failure_rate: 0.5,
        min_requests: 10,
        window: Duration::from_secs(60),
        ..BreakerConfig::default()
    };
    let b = breaker(cfg);
    let store = guarded(&s, &b);
    // Alternating: never two failures in a row, but half of all requests.
    for i in 0..10 {
        assert_eq!(b.state(), BreakerState::Closed, "request {i}");
        if i % 2 == 1 {
            s.fail_next(1, ErrorKind::Unavailable);
        }
        let _ = store.head("k").await;
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn breaker_counts_only_unhealthy_errors() {
    let s = seeded("p").await;
    let b = breaker(consecutive(2));
    let store = guarded(&s, &b);
    for kind in [
        ErrorKind::NotFound,
        ErrorKind::PreconditionFailed,
        ErrorKind::Invalid,
        ErrorKind::Throttled,
    ] {
        s.fail_next(3, kind);
        for _ in 0..3 {
            assert!(store.head("k").await.is_err());
        }
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "{kind:?} opened the breaker"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn breaker_half_open_probe_closes_on_success() {
    let s = seeded("p").await;
    let b = breaker(consecutive(1));
    let store = Arc::new(guarded(&s, &b));
    s.fail_next(1, ErrorKind::Unavailable);
    assert!(store.head("k").await.is_err());
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!((b.state(), b.gauge()), (BreakerState::HalfOpen, 1));

    // One probe at a time: a second request while it runs fails fast.
    s.push(Step::delay(Duration::from_secs(1)));
    let probe = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.head("k").await }
    });
    while s.calls(Op::Head) < 2 {
        tokio::task::yield_now().await;
    }
    let busy = store.head("k").await.unwrap_err();
    assert_eq!(
        (busy.kind(), s.calls(Op::Head)),
        (ErrorKind::Unavailable, 2)
    );
    probe.await.unwrap().unwrap();
    assert_eq!((b.state(), b.gauge()), (BreakerState::Closed, 0));
    store.head("k").await.unwrap();
    assert_eq!(s.calls(Op::Head), 3);
}

#[tokio::test(start_paused = true)]
async fn breaker_reopens_when_the_probe_fails() {
    let s = seeded("p").await;
    let b = breaker(consecutive(1));
    let store = guarded(&s, &b);
    s.fail_next(2, ErrorKind::Timeout);
    assert!(store.head("k").await.is_err());
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        store.head("k").await.unwrap_err().kind(),
        ErrorKind::Timeout,
        "the probe ran"
    );
    assert_eq!((b.state(), b.times_opened()), (BreakerState::Open, 2));
    let err = store.head("k").await.unwrap_err();
    assert_eq!(
        err.retry_after(),
        Some(Duration::from_secs(10)),
        "a fresh cool-down"
    );
    assert_eq!(s.calls(Op::Head), 2);
}

#[tokio::test(start_paused = true)]
async fn breaker_outside_retry_sees_one_outcome_per_request() {
    let s = seeded("p").await;
    s.set_down(Some(ErrorKind::Unavailable));
    let b = breaker(consecutive(2));
    let inner: Arc<dyn ObjectStore> = Arc::new(retry(&s, policy(3)));
    let store = BreakerStore::new(inner, Arc::clone(&b));
    assert!(store.head("k").await.is_err());
    assert_eq!((s.calls(Op::Head), b.state()), (3, BreakerState::Closed));
    assert!(store.head("k").await.is_err());
    assert_eq!((s.calls(Op::Head), b.state()), (6, BreakerState::Open));
    let start = Instant::now();
    assert!(store.head("k").await.is_err());
    assert_eq!(
        (s.calls(Op::Head), start.elapsed()),
        (6, Duration::ZERO),
        "no retries, no sleeps"
    );
}

#[tokio::test(start_paused = true)]
async fn breaker_counts_failed_uploads() {
    let s = seeded("p").await;
    // Starting an upload succeeds and resets a run of failures, so uploads
    // that always fail at completion show as a failure rate.
    let cfg = BreakerConfig {
        consecutive_failures: 0,
        failure_rate: 0.5,
        min_requests: 4,
        ..consecutive(0)
    };
    let b = breaker(cfg);
    let store = guarded(&s, &b);
    for _ in 0..2 {
        let mut w = store
            .put_writer("big", PutOptions::default())
            .await
            .unwrap();
        s.push(Step::fail(ErrorKind::Unavailable).on(Op::Finish));
        w.write(Bytes::from_static(b"x")).await.unwrap();
        assert!(w.finish().await.is_err());
    }
    assert_eq!(b.state(), BreakerState::Open);
    assert!(
        store
            .put_writer("big", PutOptions::default())
            .await
            .is_err()
    );
    assert_eq!(s.calls(Op::PutWriter), 2);
}

// ---- rate limit ----

#[tokio::test(start_paused = true)]
async fn rate_limiter_spaces_requests() {
    let s = seeded("p").await;
    let cfg = RateLimit {
        burst: Some(2),
        ..RateLimit::per_second(10)
    };
    let limiter = Arc::new(RateLimiter::new("t", &cfg).unwrap());
    let store = RateLimitedStore::new(Arc::new(s.clone()), limiter);
    for _ in 0..7 {
        store.head("k").await.unwrap();
    }
    let g = gaps(&s.call_times(Op::Head));
    assert_eq!(g[0], Duration::ZERO, "the burst goes at once");
    for gap in &g[1..] {
        assert!(*gap >= ms(99) && *gap <= ms(101) + MS, "{g:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_is_shared_by_concurrent_callers() {
    let s = seeded("p").await;
    let cfg = RateLimit {
        burst: Some(1),
        ..RateLimit::per_second(20)
    };
    let limiter = Arc::new(RateLimiter::new("t", &cfg).unwrap());
    let store = Arc::new(RateLimitedStore::new(Arc::new(s.clone()), limiter));
    let start = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.head("k").await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let took = start.elapsed();
    assert!(
        took >= ms(450) && took <= ms(460),
        "10 requests at 20/s: {took:?}"
    );
}

// ---- hedging ----

#[tokio::test(start_paused = true)]
async fn hedge_second_request_wins_over_a_stalled_first() {
    let s = seeded("p").await;
    s.push(Step::delay(Duration::from_secs(30)).on(Op::Get));
    let store = HedgedStore::new(Arc::new(s.clone()), Some(ms(200)));
    let start = Instant::now();
    assert_eq!(read(&store).await.unwrap(), "data");
    let took = start.elapsed();
    assert!(took >= ms(200) && took <= ms(200) + MS, "{took:?}");
    assert_eq!((s.calls(Op::Get), store.hedges()), (2, 1));
    assert_eq!(
        (store.hedges_won(), store.hedges_lost()),
        (1, 0),
        "the second request answered"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hedge_the_first_request_beats_is_lost() {
    let s = seeded("p").await;
    s.push(Step::delay(ms(250)).on(Op::Get));
    s.push(Step::delay(ms(900)).on(Op::Get));
    let store = HedgedStore::new(Arc::new(s.clone()), Some(ms(200)));
    assert_eq!(read(&store).await.unwrap(), "data");
    assert_eq!(
        (store.hedges(), store.hedges_won(), store.hedges_lost()),
        (1, 0, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn hedge_not_sent_when_the_first_answers_in_time() {
    let s = seeded("p").await;
    s.set_latency(ms(50));
    let store = HedgedStore::new(Arc::new(s.clone()), Some(ms(200)));
    let start = Instant::now();
    assert_eq!(read(&store).await.unwrap(), "data");
    assert_eq!(store.head("k").await.unwrap().size, 4);
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(
        (s.calls(Op::Get), s.calls(Op::Head), store.hedges()),
        (1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn hedge_waits_for_the_other_after_a_transient_failure() {
    let s = seeded("p").await;
    // First: slow then Unavailable at 300 ms; hedge at 100 ms answers at 600 ms.
    s.push(
        Step::fail(ErrorKind::Unavailable)
            .after(ms(300))
            .on(Op::Head),
    );
    s.push(Step::delay(ms(500)).on(Op::Head));
    let store = HedgedStore::new(Arc::new(s.clone()), Some(ms(100)));
    let start = Instant::now();
    assert_eq!(store.head("k").await.unwrap().size, 4);
    assert_eq!(start.elapsed(), ms(600));
    assert_eq!(
        (store.hedges(), store.hedges_won()),
        (1, 1),
        "the hedge's answer"
    );
    // A definitive answer (NotFound) from either copy is returned as is.
    s.push(Step::delay(Duration::from_secs(9)).on(Op::Head));
    s.push(Step::fail(ErrorKind::NotFound).on(Op::Head));
    assert_eq!(
        store.head("k").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!((store.hedges(), store.hedges_won()), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn hedge_off_and_writes_pass_through() {
    let s = seeded("p").await;
    s.set_latency(Duration::from_secs(2));
    let off = HedgedStore::new(Arc::new(s.clone()), None);
    read(&off).await.unwrap();
    let on = HedgedStore::new(Arc::new(s.clone()), Some(ms(10)));
    on.put("w", Bytes::from_static(b"x"), PutOptions::default())
        .await
        .unwrap();
    on.list("", None).await.unwrap();
    assert_eq!(
        (s.calls(Op::Get), s.calls(Op::Put), s.calls(Op::List)),
        (1, 1, 1)
    );
    assert_eq!(on.hedges(), 0);
}

// ---- replicas ----

/// Over clones of `stores` (which share their state), the first primary.
fn replicated(stores: &[&ScriptedStore]) -> Result<ReplicatedStore> {
    let stores = stores
        .iter()
        .map(|s| Arc::new((*s).clone()) as Arc<dyn ObjectStore>)
        .collect();
    ReplicatedStore::new(stores)
}

#[tokio::test(start_paused = true)]
async fn replica_serves_reads_when_the_primary_cannot() {
    for kind in [
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::Throttled,
    ] {
        let (p, r) = (seeded("p").await, seeded("r").await);
        p.set_down(Some(kind));
        let store = replicated(&[&p, &r]).unwrap();
        assert_eq!(read(&store).await.unwrap(), "data", "{kind:?}");
        assert_eq!(store.head("k").await.unwrap().size, 4);
        assert_eq!(store.list("", None).await.unwrap().objects.len(), 1);
        assert_eq!(
            (p.total_calls(), r.total_calls(), store.failovers()),
            (3, 3, 3)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn replica_serves_reads_while_the_primary_breaker_is_open() {
    let (p, r) = (seeded("p").await, seeded("r").await);
    let b = breaker(consecutive(1));
    let primary: Arc<dyn ObjectStore> = Arc::new(guarded(&p, &b));
    let store = ReplicatedStore::new(vec![primary, Arc::new(r.clone())]).unwrap();
    p.fail_next(1, ErrorKind::Unavailable);
    assert_eq!(read(&store).await.unwrap(), "data");
    assert_eq!(b.state(), BreakerState::Open);
    for _ in 0..5 {
        assert_eq!(read(&store).await.unwrap(), "data");
    }
    assert_eq!(
        (p.calls(Op::Get), r.calls(Op::Get)),
        (1, 6),
        "the open primary was skipped"
    );
}

#[tokio::test(start_paused = true)]
async fn not_found_on_the_primary_is_authoritative_by_default() {
    let (p, r) = (ScriptedStore::new("p"), seeded("r").await);
    let store = replicated(&[&p, &r]).unwrap();
    assert_eq!(read(&store).await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(r.total_calls(), 0);
    let fallback = replicated(&[&p, &r]).unwrap().fallback_on_not_found(true);
    assert_eq!(read(&fallback).await.unwrap(), "data");
    // Missing everywhere: NotFound, even if a later copy was unreachable.
    r.set_down(Some(ErrorKind::Unavailable));
    assert_eq!(
        fallback.head("k").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(start_paused = true)]
async fn other_errors_are_not_failed_over() {
    let (p, r) = (seeded("p").await, seeded("r").await);
    let store = replicated(&[&p, &r]).unwrap();
    for kind in [
        ErrorKind::PreconditionFailed,
        ErrorKind::Invalid,
        ErrorKind::Unauthorized,
    ] {
        p.fail_next(1, kind);
        assert_eq!(store.head("k").await.unwrap_err().kind(), kind);
    }
    assert_eq!(r.total_calls(), 0);
    p.set_down(Some(ErrorKind::Unavailable));
    r.set_down(Some(ErrorKind::Timeout));
    assert_eq!(
        store.head("k").await.unwrap_err().kind(),
        ErrorKind::Timeout,
        "the last error"
    );
}

#[tokio::test(start_paused = true)]
async fn writes_reach_every_copy() {
    let (p, r1, r2) = (
        ScriptedStore::new("p"),
        ScriptedStore::new("r1"),
        ScriptedStore::new("r2"),
    );
    let store = replicated(&[&p, &r1, &r2]).unwrap();
    store
        .put("small", Bytes::from_static(b"abc"), PutOptions::default())
        .await
        .unwrap();
    let mut w = store
        .put_writer("big", PutOptions::default())
        .await
        .unwrap();
    for chunk in [&b"hello "[..], b"world"] {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(w.finish().await.unwrap().size, 11);
    for copy in [&p, &r1, &r2] {
        assert_eq!(read_key(copy, "small").await.unwrap(), "abc");
        assert_eq!(read_key(copy, "big").await.unwrap(), "hello world");
    }
    store.delete("small").await.unwrap();
    for copy in [&p, &r1, &r2] {
        assert_eq!(
            copy.memory().head("small").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}

async fn read_key(s: &ScriptedStore, key: &str) -> Result<Bytes> {
    s.memory()
        .get(key, GetOptions::default())
        .await?
        .bytes()
        .await
}

#[tokio::test(start_paused = true)]
async fn a_failed_replica_write_leaves_the_primary_untouched() {
    let (p, r) = (ScriptedStore::new("p"), ScriptedStore::new("r"));
    let store = replicated(&[&p, &r]).unwrap();
    r.fail_next(1, ErrorKind::Unavailable);
    assert!(
        store
            .put("k", Bytes::from_static(b"x"), PutOptions::default())
            .await
            .is_err()
    );
    assert_eq!(
        p.calls(Op::Put),
        0,
        "the primary is the commit point, written last"
    );

    let mut w = store
        .put_writer("big", PutOptions::default())
        .await
        .unwrap();
    w.write(Bytes::from_static(b"x")).await.unwrap();
    r.push(Step::fail(ErrorKind::Unavailable).on(Op::Finish));
    assert_eq!(w.finish().await.unwrap_err().kind(), ErrorKind::Unavailable);
    assert_eq!((p.calls(Op::Finish), p.aborts()), (0, 1));
    assert!(p.memory().head("big").await.is_err());

    let mut w = store
        .put_writer("big", PutOptions::default())
        .await
        .unwrap();
    p.push(Step::fail(ErrorKind::Timeout).on(Op::Write));
    assert!(w.write(Bytes::from_static(b"x")).await.is_err());
    assert_eq!(
        (p.aborts(), r.aborts()),
        (2, 1),
        "every copy's upload aborted"
    );
    assert!(w.finish().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn conditional_writes_are_decided_by_the_primary() {
    let (p, r) = (ScriptedStore::new("p"), ScriptedStore::new("r"));
    let store = replicated(&[&p, &r]).unwrap();
    let create = PutOptions {
        mode: PutMode::Create,
    };
    let first = store
        .put("lease", Bytes::from_static(b"1"), create.clone())
        .await
        .unwrap();
    let again = store
        .put("lease", Bytes::from_static(b"2"), create)
        .await
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::PreconditionFailed);
    assert_eq!(
        read_key(&r, "lease").await.unwrap(),
        "1",
        "the replica was not touched"
    );

    // The replica's ETag differs; the primary's is the one that counts.
    let cas = PutOptions {
        mode: PutMode::UpdateIfMatch(first.etag.unwrap()),
    };
    let mut w = store.put_writer("lease", cas.clone()).await.unwrap();
    w.write(Bytes::from_static(b"3")).await.unwrap();
    w.finish().await.unwrap();
    assert_eq!(
        (
            read_key(&p, "lease").await.unwrap(),
            read_key(&r, "lease").await.unwrap()
        ),
        ("3".into(), "3".into())
    );
    let mut stale = store.put_writer("lease", cas).await.unwrap();
    stale.write(Bytes::from_static(b"4")).await.unwrap();
    assert_eq!(
        stale.finish().await.unwrap_err().kind(),
        ErrorKind::PreconditionFailed
    );
    assert_eq!(read_key(&r, "lease").await.unwrap(), "3");
}

// ---- zones ----

const ZONES: &str = r#"
n_bits: 4
retry: {max_attempts: 2, base_delay_ms: 10, max_delay_ms: 10}
breaker: {consecutive_failures: 2, cool_down_ms: 60000}
zones:
  - name: low
    range: {start: 0, end: 7}
    s3: {bucket: low-a}
    replicas: [{bucket: low-b}]
  - name: high
    range: {start: 8, end: 15}
    s3: {bucket: high, prefix: des}
    hedge_after_ms: 100
    rate_limit: {requests_per_second: 10, burst: 1}
"#;

fn scripted_factory(
    stores: &HashMap<String, ScriptedStore>,
) -> impl Fn(&S3Location) -> Result<Arc<dyn ObjectStore>> + '_ {
    |loc: &S3Location| -> Result<Arc<dyn ObjectStore>> {
        let s = stores
            .get(&loc.bucket)
            .ok_or_else(|| des_storage::Error::Invalid(loc.bucket.clone()))?;
        Ok(Arc::new(s.clone()))
    }
}

async fn zone_stores() -> HashMap<String, ScriptedStore> {
    let mut m = HashMap::new();
    for name in ["low-a", "low-b", "high"] {
        m.insert(name.to_string(), seeded(name).await);
    }
    m
}

#[tokio::test(start_paused = true)]
async fn zones_compose_retry_breaker_and_replicas() {
    let stores = zone_stores().await;
    let file = ZonesFile::from_yaml_str(ZONES).unwrap();
    let zones = Zones::build(&file, scripted_factory(&stores)).unwrap();
    let low = zones.for_shard(3).unwrap();
    assert_eq!(low.name, "low");
    let (primary, replica) = (&stores["low-a"], &stores["low-b"]);
    primary.set_down(Some(ErrorKind::Unavailable));

    assert_eq!(read(low.store.as_ref()).await.unwrap(), "data");
    assert_eq!(primary.calls(Op::Get), 2, "retried once, then failed over");
    assert_eq!(read(low.store.as_ref()).await.unwrap(), "data");
    let (label, b) = &low.breakers[0];
    assert_eq!(
        (label.as_str(), b.state()),
        ("s3://low-a", BreakerState::Open)
    );
    assert_eq!(low.breakers[1].1.state(), BreakerState::Closed);
    for _ in 0..3 {
        assert_eq!(read(low.store.as_ref()).await.unwrap(), "data");
    }
    assert_eq!(
        primary.calls(Op::Get),
        4,
        "open breaker: the primary is no longer asked"
    );
    assert_eq!(replica.calls(Op::Get), 5);
    let retries = low
        .counters
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    let failovers = low
        .counters
        .failovers
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((retries, failovers), (2, 5));

    // Writes need every copy: with the primary's breaker open they fail.
    primary.set_down(None);
    assert!(
        low.store
            .put("n", Bytes::from_static(b"x"), PutOptions::default())
            .await
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn zones_hedge_and_rate_limit_where_configured() {
    let stores = zone_stores().await;
    let zones = Zones::build(
        &ZonesFile::from_yaml_str(ZONES).unwrap(),
        scripted_factory(&stores),
    )
    .unwrap();
    let high = zones.for_shard(12).unwrap();
    assert_eq!(high.name, "high");
    let s = &stores["high"];
    s.push(Step::delay(Duration::from_secs(20)).on(Op::Get));
    let start = Instant::now();
    assert_eq!(read(high.store.as_ref()).await.unwrap(), "data");
    // The hedge at 100 ms waits for a rate-limit permit until 100 ms too.
    assert!(start.elapsed() <= ms(101) + MS, "{:?}", start.elapsed());
    assert_eq!(
        high.counters
            .hedges
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    for _ in 0..3 {
        high.store.head("k").await.unwrap();
    }
    let g = gaps(&s.call_times(Op::Head));
    assert!(g.iter().all(|gap| *gap >= ms(99)), "{g:?}");
    assert!(zones.for_shard(16).is_none());
}
