//! The call: one HTTP request to an endpoint, and a command's delivery —
//! attempts under the endpoint's breaker, concurrency and rate limits, with
//! backoff between them — until it has an outcome.
//!
//! 2xx succeeds; 5xx, 408, 429, timeouts and connection failures are tried
//! again up to `retry.attempts`, then fail; any other status fails at once
//! (redirects are not followed).
//! Every attempt carries the command id as its `Idempotency-Key`, so the
//! service can tell a repeated call (a retry, or a call made again after a
//! crash) from a new one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::config::{EndpointPlan, RetryConfig, Roots, Secret};
use super::limits::{Breaker, Change, RateLimit, backoff};
use super::metrics::ConnectMetrics;
use super::request::{Command, Request};

/// A remote service: its client (TLS, timeout), credentials and limits.
pub struct Endpoint {
    pub name: String,
    agent: ureq::Agent,
    auth: Vec<(String, Secret)>,
    timeout: Duration,
    max_response_bytes: u64,
    retry: RetryConfig,
    slots: Arc<Semaphore>,
    rate: Option<RateLimit>,
    breaker: Arc<Breaker>,
    metrics: Arc<ConnectMetrics>,
}

/// What one attempt got.
#[derive(Debug)]
pub enum Answer {
    /// The server answered.
    Status {
        status: u16,
        body: Json,
        /// The body was larger than `max_response_bytes` and is left out.
        truncated: bool,
        retry_after: Option<Duration>,
    },
    /// No answer within the endpoint's timeout.
    Timeout(String),
    /// No connection (refused, name not found, TLS failed, reset).
    Unreachable(String),
    /// The request cannot be sent as built (an invalid header or URL).
    Invalid(String),
}

/// What became of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Succeeded {
        status: u16,
        body: Json,
        truncated: bool,
    },
    Failed {
        /// The last status the server answered with, if it answered.
        status: Option<u16>,
        reason: String,
        body: Json,
        truncated: bool,
    },
}

/// A command's outcome and the calls it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub outcome: Outcome,
    pub attempts: u32,
}

/// An attempt's answer, judged.
enum Verdict {
    Done(Outcome),
    Again {
        reason: String,
        status: Option<u16>,
        body: Json,
        retry_after: Option<Duration>,
    },
}

fn status_text(status: u16) -> String {
    let reason = ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    match reason {
        Some(r) => format!("HTTP {status} {r}"),
        None => format!("HTTP {status}"),
    }
}

/// The metric label of an answer.
fn label(a: &Answer) -> &'static str {
    match a {
        Answer::Status { status, .. } => match status {
            200..=299 => "succeeded",
            408 | 429 => "throttled",
            500..=599 => "server_error",
            _ => "rejected",
        },
        Answer::Timeout(_) => "timeout",
        Answer::Unreachable(_) => "unreachable",
        Answer::Invalid(_) => "invalid",
    }
}

fn judge(a: Answer) -> Verdict {
    match a {
        Answer::Status {
            status,
            body,
            truncated,
            ..
        } if (200..300).contains(&status) => Verdict::Done(Outcome::Succeeded {
            status,
            body,
            truncated,
        }),
        // 408 and 429 say "not now" rather than "never": tried again, as
        // late as the server's Retry-After asks.
        Answer::Status {
            status,
            body,
            retry_after,
            ..
        } if status >= 500 || status == 408 || status == 429 => Verdict::Again {
            reason: status_text(status),
            status: Some(status),
            body,
            retry_after,
        },
        Answer::Status {
            status,
            body,
            truncated,
            ..
        } => Verdict::Done(Outcome::Failed {
            status: Some(status),
            reason: status_text(status),
            body,
            truncated,
        }),
        Answer::Timeout(why) | Answer::Unreachable(why) => Verdict::Again {
            reason: why,
            status: None,
            body: Json::Null,
            retry_after: None,
        },
        Answer::Invalid(why) => Verdict::Done(Outcome::Failed {
            status: None,
            reason: why,
            body: Json::Null,
            truncated: false,
        }),
    }
}

/// Counts a call in flight for as long as it lives.
struct InFlight(prometheus_client::metrics::gauge::Gauge);

impl InFlight {
    fn new(g: prometheus_client::metrics::gauge::Gauge) -> InFlight {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Endpoint {
    pub fn new(plan: EndpointPlan, metrics: Arc<ConnectMetrics>) -> Endpoint {
        use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
        let roots = match plan.roots {
            Roots::System => RootCerts::PlatformVerifier,
            Roots::Only(certs) => RootCerts::new_with_certs(&certs),
        };
        // native-tls: OpenSSL, which librdkafka's TLS already builds in.
        let tls = TlsConfig::builder()
            .provider(TlsProvider::NativeTls)
            .root_certs(roots)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(plan.timeout))
            .http_status_as_error(false)
            // A redirected POST would become a GET, or fail half-way: a
            // 3xx is an answer like any other (it fails the command).
            .max_redirects(0)
            .user_agent(concat!("baton-connect/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(plan.concurrency)
            .build()
            .into();
        metrics.announce(&plan.name);
        Endpoint {
            agent,
            auth: plan.auth,
            timeout: plan.timeout,
            max_response_bytes: plan.max_response_bytes,
            retry: plan.retry,
            slots: Arc::new(Semaphore::new(plan.concurrency)),
            rate: plan
                .rate_limit
                .map(|r| RateLimit::new(r.per_second, r.burst)),
            breaker: Arc::new(Breaker::new(&plan.breaker)),
            metrics,
            name: plan.name,
        }
    }

    /// One attempt (blocking): the request with the connector's headers.
    pub fn send(&self, req: &Request, command: &Command) -> Answer {
        let given = |name: &str| {
            req.headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        let mut b = ureq::http::Request::builder()
            .method(req.method.clone())
            .uri(&req.url)
            .header("Idempotency-Key", &command.event.id);
        for (name, value) in &command.trace {
            b = b.header(name.as_str(), value.as_slice());
        }
        for (name, secret) in &self.auth {
            b = b.header(name.as_str(), secret.expose());
        }
        for (name, value) in &req.headers {
            b = b.header(name.as_str(), value.as_str());
        }
        if !given("accept") {
            b = b.header("Accept", "application/json");
        }
        if req.body.is_some() && !given("content-type") {
            b = b.header("Content-Type", "application/json");
        }
        let sent = match &req.body {
            Some(body) => b.body(body.clone()).map(|r| self.agent.run(r)),
            None => b.body(()).map(|r| self.agent.run(r)),
        };
        let response = match sent {
            Err(e) => return Answer::Invalid(format!("the request is not valid HTTP: {e}")),
            Ok(Err(e)) => return self.failure(e),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let (_, body) = response.into_parts();
        let (body, truncated) = match body
            .into_with_config()
            .limit(self.max_response_bytes)
            .read_to_vec()
        {
            Ok(bytes) => (parse_body(&bytes), false),
            Err(ureq::Error::BodyExceedsLimit(_)) => (Json::Null, true),
            Err(e) => return self.failure(e),
        };
        Answer::Status {
            status,
            body,
            truncated,
            retry_after,
        }
    }

    fn failure(&self, e: ureq::Error) -> Answer {
        match e {
            ureq::Error::Timeout(_) => Answer::Timeout(format!(
                "no answer within {} (timeout)",
                humantime::format_duration(self.timeout)
            )),
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                Answer::Timeout(format!(
                    "no answer within {} (timeout)",
                    humantime::format_duration(self.timeout)
                ))
            }
            ureq::Error::Io(io) => Answer::Unreachable(format!("connection failed: {io}")),
            ureq::Error::BadUri(why) => Answer::Invalid(format!("bad URL: {why}")),
            ureq::Error::Http(why) => {
                Answer::Invalid(format!("the request is not valid HTTP: {why}"))
            }
            other => Answer::Unreachable(format!("connection failed: {other}")),
        }
    }

    /// Calls until the command has an outcome: attempts wait for the
    /// breaker, a concurrency slot and the rate limit, in that order, so a
    /// call goes out as soon as its rate-limit slot comes.
    pub async fn deliver(
        self: Arc<Self>,
        request: Arc<Request>,
        command: Arc<Command>,
    ) -> Delivery {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pass = self.breaker.admit().await;
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.metrics.concurrency_wait(&self.name);
                    match self.slots.clone().acquire_owned().await {
                        Ok(p) => p,
                        // The semaphore is never closed.
                        Err(_) => continue,
                    }
                }
            };
            if let Some(rate) = &self.rate
                && rate.acquire().await
            {
                self.metrics.rate_limited(&self.name);
            }
            let started = Instant::now();
            let (me, req, cmd) = (self.clone(), request.clone(), command.clone());
            let in_flight = self.metrics.in_flight(&self.name);
            // The slot is released when the call really ends, even if this
            // task is cancelled meanwhile (a partition revoked).
            let answer = tokio::task::spawn_blocking(move || {
                let _slot = permit;
                let _counted = InFlight::new(in_flight);
                me.send(&req, &cmd)
            })
            .await
            .unwrap_or_else(|e| Answer::Unreachable(format!("the call failed: {e}")));
            self.metrics
                .call(&self.name, label(&answer), started.elapsed().as_secs_f64());
            let verdict = judge(answer);
            let endpoint_failed = matches!(verdict, Verdict::Again { .. });
            match pass.record(endpoint_failed) {
                Change::Opened => {
                    warn!(endpoint = %self.name, pause = %humantime::format_duration(self.breaker_pause()), "circuit breaker open: the endpoint is paused after repeated failures");
                    self.metrics.breaker(&self.name, true, true);
                }
                Change::Reopened => self.metrics.breaker(&self.name, true, false),
                Change::Closed => {
                    tracing::info!(endpoint = %self.name, "circuit breaker closed: the endpoint answers again");
                    self.metrics.breaker(&self.name, false, false);
                }
                Change::None => {}
            }
            match verdict {
                Verdict::Done(outcome) => {
                    return Delivery {
                        outcome,
                        attempts: attempt,
                    };
                }
                Verdict::Again {
                    reason,
                    retry_after,
                    ..
                } if attempt < self.retry.attempts => {
                    let wait = backoff(&self.retry, attempt, retry_after);
                    debug!(endpoint = %self.name, command = %command.event.id, attempt, %reason, wait_ms = wait.as_millis() as u64, "call failed; trying again");
                    self.metrics.retry(&self.name);
                    tokio::time::sleep(wait).await;
                }
                Verdict::Again {
                    reason,
                    status,
                    body,
                    ..
                } => {
                    return Delivery {
                        outcome: Outcome::Failed {
                            status,
                            reason: format!("{reason}; gave up after {attempt} attempts"),
                            body,
                            truncated: false,
                        },
                        attempts: attempt,
                    };
                }
            }
        }
    }

    fn breaker_pause(&self) -> Duration {
        self.breaker.pause()
    }
}

/// An answer's body: JSON when it is JSON, else its text; `null` when empty.
fn parse_body(bytes: &[u8]) -> Json {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Json::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Json::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(s: u16) -> Answer {
        Answer::Status {
            status: s,
            body: json!({"s": s}),
            truncated: false,
            retry_after: None,
        }
    }

    #[test]
    fn answers_are_judged_as_the_issue_says() {
        assert!(matches!(
            judge(status(201)),
            Verdict::Done(Outcome::Succeeded { status: 201, .. })
        ));
        for s in [400, 401, 404, 409, 422, 302] {
            match judge(status(s)) {
                Verdict::Done(Outcome::Failed {
                    status: Some(got),
                    reason,
                    ..
                }) => {
                    assert_eq!(got, s);
                    assert!(reason.starts_with(&format!("HTTP {s}")), "{reason}");
                }
                _ => panic!("{s} must fail at once"),
            }
        }
        for s in [500, 502, 503, 408, 429] {
            assert!(matches!(judge(status(s)), Verdict::Again { .. }), "{s}");
        }
        assert!(matches!(
            judge(Answer::Timeout("t".into())),
            Verdict::Again { .. }
        ));
        assert!(matches!(
            judge(Answer::Unreachable("refused".into())),
            Verdict::Again { .. }
        ));
        assert!(matches!(
            judge(Answer::Invalid("bad".into())),
            Verdict::Done(Outcome::Failed { status: None, .. })
        ));
        assert_eq!(label(&status(429)), "throttled");
        assert_eq!(label(&status(404)), "rejected");
    }

    #[test]
    fn bodies_are_json_text_or_null() {
        assert_eq!(parse_body(b" {\"a\": 1} "), json!({"a": 1}));
        assert_eq!(parse_body(b"ok"), json!("ok"));
        assert_eq!(parse_body(b"  \n"), Json::Null);
    }
}
