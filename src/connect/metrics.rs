//! The connector's metrics and its health port (`/healthz`, `/readyz`,
//! `/metrics`). Names follow baton's: `baton_connector_<thing>_<unit>_total`;
//! labels hold endpoint names (from the configuration), topics, outcomes and
//! reasons, never command ids or keys.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointOutcome {
    endpoint: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabel {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

type Histograms = Family<EndpointLabel, Histogram, fn() -> Histogram>;

fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Every metric of `baton connect`.
pub struct ConnectMetrics {
    registry: Registry,
    calls: Family<EndpointOutcome, Counter>,
    call_seconds: Histograms,
    retries: Family<EndpointLabel, Counter>,
    outcomes: Family<EndpointOutcome, Counter>,
    in_flight: Family<EndpointLabel, Gauge>,
    concurrency_waits: Family<EndpointLabel, Counter>,
    rate_limited: Family<EndpointLabel, Counter>,
    breaker_open: Family<EndpointLabel, Gauge>,
    breaker_opened: Family<EndpointLabel, Counter>,
    consumed: Family<TopicLabel, Counter>,
    ignored: Family<ReasonLabel, Counter>,
    /// Commands taken whose outcome is not committed yet.
    pub pending: Gauge,
    transactions: Family<OutcomeLabel, Counter>,
}

impl Default for ConnectMetrics {
    fn default() -> Self {
        ConnectMetrics::new()
    }
}

impl ConnectMetrics {
    pub fn new() -> ConnectMetrics {
        let mut r = Registry::with_prefix("baton_connector");
        let m = ConnectMetrics {
            registry: Registry::default(),
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(call_buckets as fn() -> Histogram),
            retries: Family::default(),
            outcomes: Family::default(),
            in_flight: Family::default(),
            concurrency_waits: Family::default(),
            rate_limited: Family::default(),
            breaker_open: Family::default(),
            breaker_opened: Family::default(),
            consumed: Family::default(),
            ignored: Family::default(),
            pending: Gauge::default(),
            transactions: Family::default(),
        };
        r.register(
            "calls",
            "HTTP calls made, by endpoint and outcome (succeeded: 2xx, rejected: other 4xx and 3xx, throttled: 408 and 429, server_error: 5xx, timeout, unreachable)",
            m.calls.clone(),
        );
        r.register_with_unit(
            "call",
            "Time one HTTP call took",
            Unit::Seconds,
            m.call_seconds.clone(),
        );
        r.register(
            "retries",
            "Calls made again after a 5xx, 408/429, timeout or connection failure",
            m.retries.clone(),
        );
        r.register(
            "outcomes",
            "Commands decided, by endpoint and outcome (succeeded, failed)",
            m.outcomes.clone(),
        );
        r.register(
            "calls_in_flight",
            "Calls under way (at most the endpoint's concurrency)",
            m.in_flight.clone(),
        );
        r.register(
            "concurrency_waits",
            "Calls that waited for a free slot of the endpoint's concurrency limit",
            m.concurrency_waits.clone(),
        );
        r.register(
            "rate_limited",
            "Calls delayed by the endpoint's rate limit",
            m.rate_limited.clone(),
        );
        r.register(
            "breaker_open",
            "1 while the endpoint's circuit breaker pauses it",
            m.breaker_open.clone(),
        );
        r.register(
            "breaker_opened",
            "Times the endpoint's circuit breaker paused it",
            m.breaker_opened.clone(),
        );
        r.register(
            "commands_consumed",
            "Records read from the command topics",
            m.consumed.clone(),
        );
        r.register(
            "commands_ignored",
            "Command records passed over, by reason (no-connector: a type no [[commands]] entry names; undecodable)",
            m.ignored.clone(),
        );
        r.register(
            "commands_pending",
            "Commands taken whose outcome is not committed yet",
            m.pending.clone(),
        );
        r.register(
            "transactions",
            "Kafka transactions of outcomes and offsets, by outcome (committed, aborted)",
            m.transactions.clone(),
        );
        ConnectMetrics { registry: r, ..m }
    }

    fn endpoint(name: &str) -> EndpointLabel {
        EndpointLabel {
            endpoint: name.to_string(),
        }
    }

    fn pair(endpoint: &str, outcome: &str) -> EndpointOutcome {
        EndpointOutcome {
            endpoint: endpoint.to_string(),
            outcome: outcome.to_string(),
        }
    }

    pub fn call(&self, endpoint: &str, outcome: &str, seconds: f64) {
        self.calls
            .get_or_create(&Self::pair(endpoint, outcome))
            .inc();
        self.call_seconds
            .get_or_create(&Self::endpoint(endpoint))
            .observe(seconds);
    }

    pub fn retry(&self, endpoint: &str) {
        self.retries.get_or_create(&Self::endpoint(endpoint)).inc();
    }

    pub fn outcome(&self, endpoint: &str, succeeded: bool) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        self.outcomes
            .get_or_create(&Self::pair(endpoint, outcome))
            .inc();
    }

    pub fn in_flight(&self, endpoint: &str) -> Gauge {
        self.in_flight
            .get_or_create(&Self::endpoint(endpoint))
            .clone()
    }

    pub fn concurrency_wait(&self, endpoint: &str) {
        self.concurrency_waits
            .get_or_create(&Self::endpoint(endpoint))
            .inc();
    }

    pub fn rate_limited(&self, endpoint: &str) {
        self.rate_limited
            .get_or_create(&Self::endpoint(endpoint))
            .inc();
    }

    /// The breaker paused the endpoint (`opened`: it was not paused before) or let it go.
    pub fn breaker(&self, endpoint: &str, open: bool, opened: bool) {
        self.breaker_open
            .get_or_create(&Self::endpoint(endpoint))
            .set(i64::from(open));
        if opened {
            self.breaker_opened
                .get_or_create(&Self::endpoint(endpoint))
                .inc();
        }
    }

    /// Makes the endpoint's series exist (at 0) before anything happens to it.
    pub fn announce(&self, endpoint: &str) {
        let e = Self::endpoint(endpoint);
        let _ = self.breaker_open.get_or_create(&e);
        let _ = self.breaker_opened.get_or_create(&e);
        let _ = self.rate_limited.get_or_create(&e);
        let _ = self.concurrency_waits.get_or_create(&e);
        let _ = self.in_flight.get_or_create(&e);
        let _ = self.retries.get_or_create(&e);
    }

    pub fn consumed(&self, topic: &str) {
        self.consumed
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .inc();
    }

    pub fn ignored(&self, reason: &str) {
        self.ignored
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn transaction(&self, committed: bool) {
        let outcome = if committed { "committed" } else { "aborted" };
        self.transactions
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl crate::admin::MetricsText for ConnectMetrics {
    fn encode(&self) -> String {
        ConnectMetrics::encode(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention() {
        let m = ConnectMetrics::new();
        m.announce("crm");
        m.call("crm", "succeeded", 0.02);
        m.outcome("crm", false);
        m.breaker("crm", true, true);
        m.rate_limited("crm");
        m.transaction(true);
        m.ignored("no-connector");
        let text = m.encode();
        for line in [
            "baton_connector_calls_total{endpoint=\"crm\",outcome=\"succeeded\"} 1",
            "baton_connector_call_seconds_count{endpoint=\"crm\"} 1",
            "baton_connector_outcomes_total{endpoint=\"crm\",outcome=\"failed\"} 1",
            "baton_connector_breaker_open{endpoint=\"crm\"} 1",
            "baton_connector_breaker_opened_total{endpoint=\"crm\"} 1",
            "baton_connector_rate_limited_total{endpoint=\"crm\"} 1",
            "baton_connector_retries_total{endpoint=\"crm\"} 0",
            "baton_connector_transactions_total{outcome=\"committed\"} 1",
            "baton_connector_commands_ignored_total{reason=\"no-connector\"} 1",
            "baton_connector_commands_pending 0",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
    }
}
