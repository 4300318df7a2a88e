//! Prometheus metrics (the server's `GET /metrics`), kept with `prometheus-client`: request counts by route
//! and status, tokens in and out, queue depth and busy slots, and latency histograms.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub prompt_tokens: Counter,
    /// Prompt tokens found in a slot's cache (a prefix shared with the slot's last request).
    pub prompt_tokens_cached: Counter,
    /// Requests that found part of their prompt in a slot's cache.
    pub prefix_hits: Counter,
    pub generated_tokens: Counter,
    /// Requests that restored part of their prompt from the prefix cache.
    pub prefix_cache_restores: Counter,
    /// Blocks dropped from the prefix cache to stay within `--cache-ram`.
    pub prefix_cache_evictions: Counter,
    /// Bytes of KV the prefix cache holds.
    pub prefix_cache_bytes: Gauge,
    /// Prompt-lookup draft tokens verified, and those accepted.
    pub draft_tokens: Counter,
    pub draft_tokens_accepted: Counter,
    /// Requests waiting for a slot.
    pub queue_depth: Gauge,
    /// Slots holding a sequence (prefilling or decoding).
    pub slots_busy: Gauge,
    pub slots_total: Gauge,
    /// Sequences cancelled because their client went away.
    pub cancelled: Counter,
    pub request_seconds: Histogram,
    pub ttft_seconds: Histogram,
    /// Time between consecutive tokens of one sequence.
    pub token_seconds: Histogram,
    /// Sequences per batched decode step.
    pub batch_size: Histogram,
}

impl Metrics {
    pub fn new(slots: usize) -> Self {
        let mut registry = Registry::with_prefix("llama3");
        let requests = Family::<RequestLabels, Counter>::default();
        let m = Self {
            requests: requests.clone(),
            prompt_tokens: Counter::default(),
            prompt_tokens_cached: Counter::default(),
            prefix_hits: Counter::default(),
            generated_tokens: Counter::default(),
            prefix_cache_restores: Counter::default(),
            prefix_cache_evictions: Counter::default(),
            prefix_cache_bytes: Gauge::default(),
            draft_tokens: Counter::default(),
            draft_tokens_accepted: Counter::default(),
            queue_depth: Gauge::default(),
            slots_busy: Gauge::default(),
            slots_total: Gauge::default(),
            cancelled: Counter::default(),
            request_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            ttft_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            token_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            registry: Registry::default(),
        };
        m.slots_total.set(slots as i64);
        registry.register("requests", "HTTP requests by route and status", requests);
        registry.register(
            "prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "prompt_tokens_cached",
            "Prompt tokens reused from a slot's KV cache",
            m.prompt_tokens_cached.clone(),
        );
        registry.register(
            "prefix_hits",
            "Requests that reused a prefix from a slot's KV cache",
            m.prefix_hits.clone(),
        );
        registry.register(
            "generated_tokens",
            "Tokens generated",
            m.generated_tokens.clone(),
        );
        registry.register(
            "prefix_cache_restores",
            "Requests that restored part of their prompt from the prefix cache",
            m.prefix_cache_restores.clone(),
        );
        registry.register(
            "prefix_cache_evictions",
            "Prefix-cache blocks evicted to stay within --cache-ram",
            m.prefix_cache_evictions.clone(),
        );
        registry.register(
            "prefix_cache_bytes",
            "Bytes of KV held by the prefix cache",
            m.prefix_cache_bytes.clone(),
        );
        registry.register(
            "draft_tokens",
            "Prompt-lookup draft tokens verified (speculative decoding)",
            m.draft_tokens.clone(),
        );
        registry.register(
            "draft_tokens_accepted",
            "Prompt-lookup draft tokens accepted",
            m.draft_tokens_accepted.clone(),
        );
        registry.register(
            "queue_depth",
            "Requests waiting for a free slot",
            m.queue_depth.clone(),
        );
        registry.register(
            "slots_busy",
            "Slots holding a running sequence",
            m.slots_busy.clone(),
        );
        registry.register("slots_total", "Slots (--parallel)", m.slots_total.clone());
        registry.register(
            "cancelled",
            "Sequences stopped because the client disconnected",
            m.cancelled.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to last byte of the answer",
            m.request_seconds.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first generated token",
            m.ttft_seconds.clone(),
        );
        registry.register(
            "time_per_output_token_seconds",
            "Time between consecutive tokens of a sequence",
            m.token_seconds.clone(),
        );
        registry.register(
            "batch_size",
            "Sequences per batched decode step",
            m.batch_size.clone(),
        );
        Self { registry, ..m }
    }

    pub fn count_request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                status,
            })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
