//! Prometheus metrics of `devset api`:
//! - `devset_api_open_streams`: SSE streams open now;
//! - `devset_api_events_sent_total`: events sent over SSE;
//! - `devset_api_event_lag_seconds`: from an event's time (its append) to its sending (histogram);
//! - `devset_api_watched_runs`: runs with a live tail;
//! - `devset_api_requests_total{route,code}`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub code: u16,
}

pub struct ApiMetrics {
    registry: Registry,
    pub open_streams: Gauge,
    pub events_sent: Counter,
    pub lag: Histogram,
    pub watched_runs: Gauge,
    pub requests: Family<RequestLabels, Counter>,
}

impl ApiMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("devset_api");
        let open_streams = Gauge::default();
        let events_sent = Counter::default();
        // 1 ms … about 16 s.
        let lag = Histogram::new([
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 16.0,
        ]);
        let watched_runs = Gauge::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("open_streams", "SSE streams open now", open_streams.clone());
        registry.register("events_sent", "Events sent over SSE", events_sent.clone());
        registry.register(
            "event_lag_seconds",
            "Time from an event's append to its sending over SSE",
            lag.clone(),
        );
        registry.register(
            "watched_runs",
            "Runs whose log is followed live",
            watched_runs.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests by route and code",
            requests.clone(),
        );
        ApiMetrics {
            registry,
            open_streams,
            events_sent,
            lag,
            watched_runs,
            requests,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding into a String");
        out
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}
