//! Configuration of the gateway: a TOML file (`--config`) with `INGEST_*`
//! environment overrides, read by [`context_runtime::config`] (every
//! problem reported at once).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use context_runtime::config::{Renamed, ServiceConfig};
use context_runtime::kafka::{KafkaSettings, KAFKA_BOOTSTRAP_RENAMED};
use context_runtime::registry::RegistrySettings;
use context_schemas::contract::topics;
use serde::{Deserialize, Serialize};

/// Request limits (`[limits]`; `INGEST_MAX_EVENTS` and the like). A request
/// over any of them is answered 413.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body as sent (compressed or not), in bytes.
    pub max_body_bytes: usize,
    /// Largest body after decompression, in bytes; decompression stops here.
    pub max_decompressed_bytes: usize,
    /// Most events in one batch.
    pub max_events: usize,
    /// Most samples per sensor in one event's motion (10 s at 100 Hz = 1000).
    pub max_samples: usize,
    /// Largest Avro record of one event, in bytes: Kafka's default topic
    /// limit (`max.message.bytes`, about 1 MB). A larger event is rejected
    /// (`event_too_large`) and dead-lettered whole; raise it together with
    /// the events topic's `max.message.bytes`.
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 << 20,
            max_decompressed_bytes: 32 << 20,
            max_events: 1000,
            max_samples: 6000,
            max_record_bytes: 1_000_000,
        }
    }
}

/// Lag-aware backpressure (`[backpressure]`; `INGEST_BACKPRESSURE_MAX_LAG`
/// and the like): the gateway answers 503 `backpressure` with `Retry-After`
/// while a consumer group that must keep up with the events topic is so far
/// behind that records it has not read could expire, so that phones keep
/// their copy instead of Kafka deleting the other one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Backpressure {
    /// Whether the gateway watches the groups at all.
    pub enabled: bool,
    /// The consumer groups that must keep up with the events topic: the
    /// sink's (`<group_prefix>-events`) and the router's (`group_id`) by
    /// default. A group that does not exist (yet) is warned about, never a
    /// reason to refuse.
    pub groups: Vec<String>,
    /// Refuse when a partition's oldest unconsumed record is older than
    /// this share of the topic's `retention.ms`, or its unconsumed bytes
    /// (estimated) pass this share of `retention.bytes` (where set).
    pub retention_share: f64,
    /// An absolute bound on the oldest unconsumed record's age as well
    /// (0: none, the default; `30s` keeps the chain within 30 s).
    #[serde(with = "context_runtime::config::duration")]
    pub max_lag: Duration,
    /// Accept again once every measure is below this share of its bound
    /// (hysteresis: no flapping at the bound).
    pub resume_share: f64,
    /// How often the groups' lag is read (in the background: requests only
    /// read the answer).
    #[serde(with = "context_runtime::config::duration")]
    pub check_interval: Duration,
    /// `Retry-After` of a refused batch.
    #[serde(with = "context_runtime::config::duration")]
    pub retry_after: Duration,
}

impl Default for Backpressure {
    fn default() -> Self {
        Backpressure {
            enabled: true,
            groups: vec!["sink-clickhouse-events".into(), "stream-router".into()],
            retention_share: 0.5,
            max_lag: Duration::ZERO,
            resume_share: 0.8,
            check_interval: Duration::from_secs(10),
            retry_after: Duration::from_secs(60),
        }
    }
}

impl Backpressure {
    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.retention_share > 0.0 && self.retention_share <= 1.0) {
            problems.push(format!(
                "backpressure.retention_share {} is not in (0, 1]",
                self.retention_share
            ));
        }
        if !(self.resume_share > 0.0 && self.resume_share < 1.0) {
            problems.push(format!(
                "backpressure.resume_share {} is not in (0, 1)",
                self.resume_share
            ));
        }
        if self.check_interval < Duration::from_millis(100) {
            problems.push("backpressure.check_interval must be at least 100ms".into());
        }
        if self.retry_after < Duration::from_secs(1) {
            problems.push("backpressure.retry_after must be at least 1s".into());
        }
        if self.enabled && self.groups.iter().any(|g| g.trim().is_empty()) {
            problems.push("backpressure.groups holds an empty name".into());
        }
        problems
    }
}

/// The producer settings that do not depend on the configuration: every
/// record waits for all in-sync replicas, the producer's own retries never
/// duplicate or reorder (idempotence), zstd batches after 5 ms. The load
/// benchmark's plain-producer ceiling uses the same.
pub const PRODUCER_SETTINGS: &[(&str, &str)] = &[("acks", "all"), ("enable.idempotence", "true")];

/// The producer's defaults, which `[kafka.properties]` may change.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[("compression.type", "zstd"), ("linger.ms", "5")];

/// librdkafka settings the gateway derives from keys of its own.
pub const DERIVED_SETTINGS: &[(&str, &str)] = &[
    ("queue.buffering.max.messages", "write `queue_max_messages`"),
    ("queue.buffering.max.kbytes", "write `queue_max_kbytes`"),
    (
        "message.max.bytes",
        "derived from `limits.max_decompressed_bytes` and `limits.max_record_bytes`",
    ),
];

/// The configuration. Each key is overridden by `INGEST_` and its name in
/// capitals (`INGEST_PRODUCE_TIMEOUT`, `INGEST_MAX_EVENTS` for
/// `limits.max_events`). Durations are written like `10s`, `5m`, `30d`.
// Unknown keys are refused by the loader (`context_runtime::config`);
// serde's `deny_unknown_fields` does not work beside `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Address of the HTTP(S) endpoint.
    pub listen: SocketAddr,
    /// How the gateway reaches Kafka (`[kafka]`: bootstrap, security).
    pub kafka: KafkaSettings,
    /// Any Confluent-compatible schema registry: `registry_url`,
    /// `registry_username`, `registry_password`, `registry_ca_file`.
    #[serde(flatten)]
    pub registry: RegistrySettings,
    pub events_topic: String,
    pub deadletter_topic: String,
    /// The forget ledger `POST /v1/forget` writes to (docs/privacy.md).
    pub forget_topic: String,
    /// `POST /v1/forget` answers 503 once the ledger holds this many
    /// forgotten installs: each costs every stage that follows the ledger
    /// up to 256 bytes of memory (raise it together with their memory).
    pub max_forgotten_installs: usize,
    /// The API keys (hashes only), reloaded when it changes.
    pub keys_file: PathBuf,
    /// PEM files; TLS (HTTP/2 and HTTP/1.1) when both are set, plain HTTP
    /// otherwise.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub limits: Limits,
    /// How long a request waits for Kafka to acknowledge every event before
    /// it answers 503.
    #[serde(with = "context_runtime::config::duration")]
    pub produce_timeout: Duration,
    /// Producer queue bounds (librdkafka `queue.buffering.max.*`); a full
    /// queue answers 503 instead of buffering without limit.
    pub queue_max_messages: u32,
    pub queue_max_kbytes: u32,
    /// Bytes of requests being processed at once, their bodies as they are
    /// read (charged from the declared `Content-Length` before a byte is
    /// read, then chunk by chunk) and as they inflate; over it, 503.
    pub max_in_flight_bytes: usize,
    /// The longest a request's body may pause (no byte arriving); the whole
    /// body must arrive within 4 times this, from the request's head on.
    /// Either exceeded: 503 with `Retry-After` (its share of
    /// `max_in_flight_bytes` is held meanwhile). The default (30 s, 2 min for
    /// the whole) takes the 4 MiB `limits.max_body_bytes` at 35 KB/s.
    #[serde(with = "context_runtime::config::duration")]
    pub body_read_timeout: Duration,
    /// Sustained decompressed bytes per second each app may send, beside its
    /// key's events per second; over it, 429 with `Retry-After`. 0 turns the
    /// byte limit off (the default: set it from what your apps send).
    pub rate_limit_bytes_per_s: u64,
    /// Decompressed bytes an app may send at once under
    /// `rate_limit_bytes_per_s` (a single batch larger than this passes on
    /// a full bucket, as with events).
    pub rate_limit_burst_bytes: u64,
    /// Events whose corrected time lies further ahead of the server clock
    /// are stored with `time_suspect` (never refused for their time).
    #[serde(with = "context_runtime::config::duration")]
    pub max_future: Duration,
    /// Events whose corrected time lies further in the past are stored with
    /// `time_suspect`.
    #[serde(with = "context_runtime::config::duration")]
    pub max_age: Duration,
    /// A repeated `batch_id` with the same body within this window is
    /// answered from memory; with another body, 409 `batch_id_reused`.
    #[serde(with = "context_runtime::config::duration")]
    pub dedup_window: Duration,
    /// Most answers kept for `dedup_window`, oldest forgotten first.
    pub dedup_capacity: usize,
    /// Most bytes those answers take in memory, each counted at its real
    /// size (its rejections included), oldest forgotten first; an answer
    /// larger than this is not kept.
    pub dedup_capacity_bytes: usize,
    /// HTTP worker threads.
    pub workers: usize,
    /// Lag-aware backpressure (`[backpressure]`).
    pub backpressure: Backpressure,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            events_topic: topics::EVENTS.into(),
            deadletter_topic: topics::DEAD_LETTER.into(),
            forget_topic: topics::FORGET.into(),
            max_forgotten_installs: 1_000_000,
            keys_file: PathBuf::from("keys.toml"),
            tls_cert: None,
            tls_key: None,
            limits: Limits::default(),
            produce_timeout: Duration::from_secs(10),
            queue_max_messages: 100_000,
            queue_max_kbytes: 256 * 1024,
            max_in_flight_bytes: 192 << 20,
            body_read_timeout: Duration::from_secs(30),
            rate_limit_bytes_per_s: 0,
            rate_limit_burst_bytes: 256 << 20,
            max_future: Duration::from_secs(3600),
            max_age: Duration::from_secs(30 * 86_400),
            dedup_window: Duration::from_secs(600),
            dedup_capacity: 100_000,
            dedup_capacity_bytes: 32 << 20,
            workers: 2,
            backpressure: Backpressure::default(),
        }
    }
}

impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "INGEST_";
    const RENAMED: &'static [Renamed] = &[KAFKA_BOOTSTRAP_RENAMED];

    fn check(&self) -> Vec<String> {
        let mut problems = self.kafka.check_owning("kafka", DERIVED_SETTINGS);
        problems.extend(self.registry.check());
        for (name, value) in [
            ("events_topic", &self.events_topic),
            ("deadletter_topic", &self.deadletter_topic),
            ("forget_topic", &self.forget_topic),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name} is empty"));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            problems.push("tls_cert and tls_key must be set together".into());
        }
        let l = &self.limits;
        if l.max_body_bytes == 0 || l.max_decompressed_bytes < l.max_body_bytes {
            problems.push("limits: max_decompressed_bytes must be at least max_body_bytes, both above 0".into());
        }
        if l.max_events == 0 || l.max_samples == 0 {
            problems.push("limits: max_events and max_samples must be above 0".into());
        }
        if l.max_record_bytes < 1024 || l.max_record_bytes > 900_000_000 {
            problems.push(format!(
                "limits: max_record_bytes {} is not between 1024 and 900000000",
                l.max_record_bytes
            ));
        }
        if self.max_in_flight_bytes < l.max_decompressed_bytes {
            problems.push("max_in_flight_bytes must be at least limits.max_decompressed_bytes".into());
        }
        if self.workers == 0 {
            problems.push("workers must be above 0".into());
        }
        problems.extend(self.backpressure.check());
        if self.body_read_timeout.is_zero() {
            problems.push("body_read_timeout must be above 0 (30s by default)".into());
        }
        if self.rate_limit_bytes_per_s > 0 && self.rate_limit_burst_bytes == 0 {
            problems.push("rate_limit_burst_bytes must be above 0 when rate_limit_bytes_per_s is set".into());
        }
        if self.dedup_capacity_bytes < 64 << 10 {
            problems.push(format!(
                "dedup_capacity_bytes {} is under 65536: room for a few answers at least",
                self.dedup_capacity_bytes
            ));
        }
        problems
    }
}

impl Config {
    /// The certificate and key files when TLS is on.
    pub fn tls(&self) -> Option<(PathBuf, PathBuf)> {
        self.tls_cert.clone().zip(self.tls_key.clone())
    }
}

#[cfg(test)]
mod tests {
    use context_runtime::config::load_from;

    use super::*;

    use context_runtime::config::vars as env;

    #[test]
    fn defaults_validate_and_problems_are_listed_together() {
        let s = load_from::<Config>(None, Vec::new()).unwrap().config;
        assert_eq!(s.listen.port(), 8080);
        assert_eq!(s.produce_timeout, Duration::from_secs(10));
        let err = load_from::<Config>(
            None,
            env(&[
                ("INGEST_LISTEN", "x"),
                ("INGEST_PRODUCE_TIMEOUT", "soon"),
                ("INGEST_TLS_CERT", "c.pem"),
                ("INGEST_MAX_EVENTS", "many"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
    }

    #[test]
    fn the_bounds_of_requests_and_of_the_dedup_memory_are_checked() {
        let s = load_from::<Config>(
            None,
            env(&[
                ("INGEST_BODY_READ_TIMEOUT", "5s"),
                ("INGEST_RATE_LIMIT_BYTES_PER_S", "1000000"),
                ("INGEST_DEDUP_CAPACITY_BYTES", "1048576"),
            ]),
        )
        .unwrap()
        .config;
        assert_eq!(
            (s.body_read_timeout, s.rate_limit_bytes_per_s, s.dedup_capacity_bytes),
            (Duration::from_secs(5), 1_000_000, 1 << 20)
        );
        let bad = Config {
            body_read_timeout: Duration::ZERO,
            rate_limit_bytes_per_s: 1000,
            rate_limit_burst_bytes: 0,
            dedup_capacity_bytes: 100,
            ..Config::default()
        };
        assert_eq!(bad.check().len(), 3, "{:?}", bad.check());
        assert!(Config::default().check().is_empty(), "{:?}", Config::default().check());
    }

    #[test]
    fn environment_overrides_the_file() {
        let file = std::env::temp_dir().join(format!("ingest-config-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "events_topic = \"a\"\n[limits]\nmax_events = 5\nmax_samples = 9\n",
        )
        .unwrap();
        let s = load_from::<Config>(
            Some(&file),
            env(&[("INGEST_EVENTS_TOPIC", "b"), ("INGEST_MAX_EVENTS", "7")]),
        )
        .unwrap()
        .config;
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            (s.events_topic.as_str(), s.limits.max_events, s.limits.max_samples),
            ("b", 7, 9)
        );
    }
}
