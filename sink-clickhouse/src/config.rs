//! Configuration of the sink: a TOML file (`--config`) with `SINK_*`
//! environment overrides, read by [`context_runtime::config`] (every problem
//! reported at once).

use std::net::SocketAddr;
use std::time::Duration;

pub use context_runtime::config::Secret;
use context_runtime::config::ServiceConfig;
use context_schemas::contract::topics;
use serde::{Deserialize, Serialize};

/// When a batch is inserted (`[batch]`, `SINK_BATCH_MAX_ROWS` and the like):
/// whichever limit is reached first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    /// Age of the oldest record in the batch, such as `5s`.
    #[serde(with = "context_runtime::config::duration")]
    pub max_age: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_rows: 50_000,
            max_bytes: 256 << 20,
            max_age: Duration::from_secs(5),
        }
    }
}

/// Each key is overridden by `SINK_` and its name in capitals
/// (`SINK_CLICKHOUSE_URL`, `SINK_BATCH_MAX_ROWS`, `SINK_MAX_BACKOFF`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// /healthz, /readyz, /metrics.
    pub admin_listen: SocketAddr,
    pub kafka_bootstrap: String,
    /// Any Confluent-compatible registry.
    pub registry_url: String,
    pub clickhouse_url: String,
    pub clickhouse_user: String,
    /// Never printed.
    pub clickhouse_password: Secret,
    pub database: String,
    /// An empty topic name turns that source off.
    pub events_topic: String,
    pub activity_topic: String,
    pub deadletter_topic: String,
    /// Consumer groups are `<prefix>-events`, `-activity`, `-deadletter`.
    pub group_prefix: String,
    #[serde(with = "context_runtime::config::duration")]
    pub session_timeout: Duration,
    #[serde(with = "context_runtime::config::duration")]
    pub max_poll_interval: Duration,
    pub batch: BatchLimits,
    /// Longest wait between insert retries while ClickHouse is unavailable.
    #[serde(with = "context_runtime::config::duration")]
    pub max_backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            kafka_bootstrap: "127.0.0.1:9092".into(),
            registry_url: "http://127.0.0.1:8081".into(),
            clickhouse_url: "http://127.0.0.1:8123".into(),
            clickhouse_user: "default".into(),
            clickhouse_password: Secret::default(),
            database: "context".into(),
            events_topic: topics::EVENTS.into(),
            activity_topic: topics::ACTIVITY.into(),
            deadletter_topic: topics::DEAD_LETTER.into(),
            group_prefix: "sink-clickhouse".into(),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            batch: BatchLimits::default(),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "SINK_";

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.database.is_empty() || !self.database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(format!("database `{}` must be letters, digits and _", self.database));
        }
        if self.events_topic.is_empty() && self.activity_topic.is_empty() && self.deadletter_topic.is_empty() {
            problems.push("every source topic is empty: nothing to do".into());
        }
        if self.batch.max_rows == 0 || self.batch.max_bytes == 0 {
            problems.push("batch.max_rows and batch.max_bytes must be above 0".into());
        }
        problems
    }
}

/// What the sink holds besides its batches and librdkafka's fetch queues:
/// code, runtime, clients, one ClickHouse insert's buffers.
pub const MEMORY_BASE_BYTES: usize = 100 << 20;

impl Config {
    /// The most memory the sink can hold, whatever the records: per source
    /// (events, activity tags, dead letters) a batch of at most
    /// `batch.max_bytes` (records and their decoded rows, plus one record)
    /// and librdkafka's queue of records fetched ahead
    /// ([`crate::service::PREFETCH_KBYTES`]), plus [`MEMORY_BASE_BYTES`].
    pub fn memory_bound(&self) -> usize {
        3 * (self.batch.max_bytes + crate::service::PREFETCH_KBYTES * 1024) + MEMORY_BASE_BYTES
    }

    /// A client for inserts (LZ4) and one for queries (uncompressed: against
    /// ClickHouse 18.16 the crate's LZ4 response path yields no rows).
    pub fn clickhouse(&self, compressed: bool) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.clickhouse_url)
            .with_user(&self.clickhouse_user)
            .with_validation(false)
            .with_compression(if compressed {
                clickhouse::Compression::Lz4
            } else {
                clickhouse::Compression::None
            });
        if !self.clickhouse_password.expose().is_empty() {
            c = c.with_password(self.clickhouse_password.expose());
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use context_runtime::config::load_from;

    use super::*;

    use context_runtime::config::vars as env;

    #[test]
    fn secrets_do_not_show_and_problems_are_listed() {
        let c = load_from::<Config>(None, env(&[("SINK_CLICKHOUSE_PASSWORD", "hunter2")]))
            .unwrap()
            .config;
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.clickhouse_password.expose(), "hunter2");
        // Once silently ignored: a malformed SINK_BATCH_MAX_ROWS; once not
        // overridable: max_backoff.
        let err = load_from::<Config>(
            None,
            env(&[
                ("SINK_DATABASE", "x;DROP"),
                ("SINK_MAX_BACKOFF", "later"),
                ("SINK_BATCH_MAX_ROWS", "lots"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
        let c = load_from::<Config>(None, env(&[("SINK_MAX_BACKOFF", "2s"), ("SINK_BATCH_MAX_ROWS", "9")]))
            .unwrap()
            .config;
        assert_eq!((c.max_backoff, c.batch.max_rows), (Duration::from_secs(2), 9));
    }
}
