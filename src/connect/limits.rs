//! What keeps a slow or failing service from being hammered: a rate limit
//! (token bucket), a circuit breaker, and the backoff between attempts.
//! (The concurrency limit is a plain semaphore, in `call`.)
//!
//! Time is tokio's, so tests drive it with `tokio::time::pause()`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::{BreakerConfig, RetryConfig};

/// A token bucket: `per_second` calls on average, `burst` at once after a
/// quiet spell. Callers reserve their slot in arrival order, so a burst is
/// spread out evenly rather than retried in a herd.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    /// Tokens (negative: slots already promised to waiting callers) and when counted.
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimit {
    pub fn new(per_second: f64, burst: u32) -> RateLimit {
        let burst = f64::from(burst.max(1));
        RateLimit {
            per_second,
            burst,
            bucket: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes the next slot; how long its caller must wait for it.
    pub fn reserve(&self, now: Instant) -> Duration {
        let Ok(mut b) = self.bucket.lock() else {
            return Duration::ZERO;
        };
        let (tokens, at) = *b;
        let refilled = (tokens + now.saturating_duration_since(at).as_secs_f64() * self.per_second)
            .min(self.burst);
        let left = refilled - 1.0;
        *b = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.per_second)
        }
    }

    /// Waits for the next slot; whether it had to wait.
    pub async fn acquire(&self) -> bool {
        let wait = self.reserve(Instant::now());
        if wait.is_zero() {
            return false;
        }
        tokio::time::sleep(wait).await;
        true
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Calls go; `failures` in a row so far.
    Closed { failures: u32 },
    /// Paused until then.
    Open { until: Instant },
    /// One call is trying the endpoint; the others wait for its outcome.
    Probing,
}

/// What a recorded outcome did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The endpoint is paused now (it was not).
    Opened,
    /// A probe failed: paused again.
    Reopened,
    /// A probe succeeded: calls go again.
    Closed,
}

/// A circuit breaker: after `failures` failed calls in a row the endpoint
/// is paused for `pause`; then one call probes it. Calls wait while it is
/// paused instead of failing, so their commands keep their attempts.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    pause: Duration,
    state: Mutex<State>,
    changed: Notify,
}

/// Leave to call, from [`Breaker::admit`]. A probe that ends without an
/// outcome (its task was cancelled) lets the next caller probe instead.
pub struct Pass {
    breaker: Arc<Breaker>,
    probe: bool,
    recorded: bool,
}

impl Pass {
    /// Records the call's outcome: `failed` when the endpoint did not
    /// answer properly (5xx, timeout, no connection).
    pub fn record(mut self, failed: bool) -> Change {
        self.recorded = true;
        self.breaker.record(self.probe, failed)
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            if let Ok(mut s) = self.breaker.state.lock() {
                *s = State::Open {
                    until: Instant::now(),
                };
            }
            self.breaker.changed.notify_waiters();
        }
    }
}

impl Breaker {
    pub fn new(c: &BreakerConfig) -> Breaker {
        Breaker {
            threshold: c.failures,
            pause: c.pause,
            state: Mutex::new(State::Closed { failures: 0 }),
            changed: Notify::new(),
        }
    }

    /// How long a pause lasts.
    pub fn pause(&self) -> Duration {
        self.pause
    }

    /// Whether the endpoint is paused (or being probed) now.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|s| !matches!(*s, State::Closed { .. }))
            .unwrap_or(false)
    }

    /// Waits until a call may go.
    pub async fn admit(self: &Arc<Self>) -> Pass {
        loop {
            // Registered before the state is read, so no change is missed.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let Ok(mut s) = self.state.lock() else {
                    return self.pass(false);
                };
                match *s {
                    State::Closed { .. } => return self.pass(false),
                    State::Open { until } if Instant::now() >= until => {
                        *s = State::Probing;
                        return self.pass(true);
                    }
                    State::Open { until } => Some(until),
                    State::Probing => None,
                }
            };
            match wait {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn pass(self: &Arc<Self>, probe: bool) -> Pass {
        Pass {
            breaker: self.clone(),
            probe,
            recorded: false,
        }
    }

    fn record(&self, probe: bool, failed: bool) -> Change {
        let Ok(mut s) = self.state.lock() else {
            return Change::None;
        };
        let now = Instant::now();
        let change = match (*s, failed) {
            (State::Closed { failures }, true) if self.threshold > 0 => {
                if failures + 1 >= self.threshold {
                    *s = State::Open {
                        until: now + self.pause,
                    };
                    Change::Opened
                } else {
                    *s = State::Closed {
                        failures: failures + 1,
                    };
                    Change::None
                }
            }
            (State::Closed { .. }, false) => {
                *s = State::Closed { failures: 0 };
                Change::None
            }
            (State::Probing, true) if probe => {
                *s = State::Open {
                    until: now + self.pause,
                };
                Change::Reopened
            }
            (State::Probing, false) if probe => {
                *s = State::Closed { failures: 0 };
                Change::Closed
            }
            // Calls let through before the pause began: the probe decides.
            _ => Change::None,
        };
        drop(s);
        if change != Change::None {
            self.changed.notify_waiters();
        }
        change
    }
}

/// How long to wait after failed attempt `attempt` (1 for the first call):
/// `backoff × factor^(attempt−1)`, at most `max_backoff`, jittered to
/// between half and all of it so retries of many commands spread out; a
/// server's `Retry-After` is honoured up to `max_backoff`.
pub fn backoff(r: &RetryConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = r.factor.powi(attempt.saturating_sub(1).min(64) as i32);
    let full = r.backoff.as_secs_f64() * exp;
    let full = if full.is_finite() {
        full.min(r.max_backoff.as_secs_f64())
    } else {
        r.max_backoff.as_secs_f64()
    };
    let jittered = full * (0.5 + fastrand::f64() * 0.5);
    let wait = Duration::from_secs_f64(jittered.max(0.0));
    match retry_after {
        Some(asked) => wait.max(asked.min(r.max_backoff)),
        None => wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_spreads_a_burst() {
        let limit = RateLimit::new(10.0, 3);
        let start = Instant::now();
        // The burst goes at once, then one every 100 ms.
        let waits: Vec<Duration> = (0..6).map(|_| limit.reserve(start)).collect();
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![0, 0, 0, 100, 200, 300]);
        // After a quiet second the bucket is full again, never fuller.
        let later = start + Duration::from_secs(10);
        let ms: Vec<u128> = (0..4).map(|_| limit.reserve(later).as_millis()).collect();
        assert_eq!(ms, vec![0, 0, 0, 100]);
        assert!(!RateLimit::new(1.0, 1).acquire().await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_pauses_after_failures_and_one_probe_resumes() {
        let b = Arc::new(Breaker::new(&BreakerConfig {
            failures: 3,
            pause: Duration::from_secs(30),
        }));
        for n in 0..3 {
            let change = b.admit().await.record(true);
            assert_eq!(change, if n == 2 { Change::Opened } else { Change::None });
        }
        assert!(b.is_open());
        let start = Instant::now();
        // Two callers wait out the pause; the first becomes the probe.
        let probe = b.admit().await;
        assert!(Instant::now() - start >= Duration::from_secs(30));
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move {
                let p = b.admit().await;
                (Instant::now(), p.record(false))
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            !waiter.is_finished(),
            "the second caller waits for the probe"
        );
        let probed_at = Instant::now();
        assert_eq!(probe.record(false), Change::Closed);
        let (admitted_at, change) = waiter.await.expect("waiter");
        assert_eq!(admitted_at, probed_at);
        assert_eq!(change, Change::None);
        assert!(!b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_pauses_again_and_a_dropped_one_hands_over() {
        let b = Arc::new(Breaker::new(&BreakerConfig {
            failures: 1,
            pause: Duration::from_secs(10),
        }));
        assert_eq!(b.admit().await.record(true), Change::Opened);
        assert_eq!(b.admit().await.record(true), Change::Reopened);
        let start = Instant::now();
        drop(b.admit().await);
        assert!(Instant::now() - start >= Duration::from_secs(10));
        // The dropped probe recorded nothing: the next caller probes at once.
        let at = Instant::now();
        assert_eq!(b.admit().await.record(false), Change::Closed);
        assert_eq!(Instant::now(), at);
        let off = Arc::new(Breaker::new(&BreakerConfig {
            failures: 0,
            pause: Duration::from_secs(1),
        }));
        for _ in 0..10 {
            assert_eq!(off.admit().await.record(true), Change::None);
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let r = RetryConfig {
            attempts: 10,
            backoff: Duration::from_millis(100),
            factor: 2.0,
            max_backoff: Duration::from_secs(1),
        };
        for _ in 0..100 {
            let first = backoff(&r, 1, None);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&r, 3, None);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&r, 40, None);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
            let asked = backoff(&r, 1, Some(Duration::from_secs(60)));
            assert_eq!(asked, Duration::from_secs(1));
        }
    }
}
