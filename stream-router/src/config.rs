//! Configuration of `stream-router run`: a TOML file (`--config`) with
//! `ROUTER_*` environment overrides, read by [`context_runtime::config`]
//! (every problem reported at once).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use context_runtime::config::{ConfigError, Loaded, Renamed, ServiceConfig};
use context_runtime::kafka::{KafkaSettings, KAFKA_BOOTSTRAP_RENAMED};
use context_runtime::pipeline::Delivery;
use context_runtime::registry::RegistrySettings;
use serde::{Deserialize, Serialize};

/// Settings of `stream-router run`. Each key is overridden by `ROUTER_` and
/// its name in capitals (`ROUTER_MAX_BATCH`). Durations read like `50ms`, `10s`.
// Unknown keys are refused by the loader (`context_runtime::config`);
// serde's `deny_unknown_fields` does not work beside `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Admin endpoints (`/healthz`, `/readyz`, `/metrics`).
    pub admin_listen: SocketAddr,
    /// How the router reaches Kafka (`[kafka]`: bootstrap, security).
    pub kafka: KafkaSettings,
    /// Any Confluent-compatible registry: `registry_url`,
    /// `registry_username`, `registry_password`, `registry_ca_file`.
    #[serde(flatten)]
    pub registry: RegistrySettings,
    /// The raw events.
    pub source_topic: String,
    /// Where records that cannot be routed go.
    pub deadletter_topic: String,
    /// The forget ledger: events of a forgotten install captured up to its
    /// request are dropped, not routed. Empty turns that off.
    pub forget_topic: String,
    pub group_id: String,
    /// The rules (see `stream-router check-rules --help`); re-read when it changes.
    pub rules_file: PathBuf,
    /// `exactly-once` (Kafka transactions) or `at-least-once`.
    pub delivery: Delivery,
    /// With exactly-once: run at least once, with a warning, on a broker
    /// without transactions instead of refusing to start.
    pub allow_fallback: bool,
    /// Stable per replica; empty means `stream-router-<host name>` (a
    /// second router on the same host takes `stream-router-<host>-2`).
    pub transactional_id: String,
    /// The largest record the router produces (librdkafka's
    /// `message.max.bytes`). An output larger than this, or than its topic's
    /// `max.message.bytes`, is refused for good and set aside in
    /// `deadletter_topic` (cut to a stub when even that does not fit).
    pub max_record_bytes: usize,
    /// Create missing target topics at start (else the start is refused,
    /// naming them).
    pub create_topics: bool,
    /// Partitions of a topic the router creates.
    pub new_topic_partitions: i32,
    /// Records per transaction at most.
    pub max_batch: usize,
    /// How long a batch waits for more records after its first.
    #[serde(with = "context_runtime::config::duration")]
    pub linger: Duration,
    #[serde(with = "context_runtime::config::duration")]
    pub session_timeout: Duration,
    /// How long a Kafka call may take.
    #[serde(with = "context_runtime::config::duration")]
    pub timeout: Duration,
    /// Work (records to fetch, or received and not committed) without
    /// progress for this long turns `/readyz` 503 with what is stuck; zero
    /// turns the watch off. Longer than any retry backoff.
    #[serde(with = "context_runtime::config::duration")]
    pub stall_after: Duration,
    /// A stall that lasts this much longer makes `/healthz` fail, so the
    /// liveness probe restarts the process.
    #[serde(with = "context_runtime::config::duration")]
    pub stall_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            source_topic: context_schemas::contract::topics::EVENTS.into(),
            deadletter_topic: context_schemas::contract::topics::DEAD_LETTER.into(),
            forget_topic: context_schemas::contract::topics::FORGET.into(),
            group_id: "stream-router".into(),
            rules_file: PathBuf::from("rules.toml"),
            delivery: Delivery::ExactlyOnce,
            allow_fallback: false,
            transactional_id: String::new(),
            max_record_bytes: context_runtime::pipeline::DEFAULT_MAX_RECORD_BYTES,
            create_topics: false,
            new_topic_partitions: 2,
            // Each transaction costs about 100 ms on the local broker: large
            // batches amortise it (docs/stream-router.md, "Throughput").
            max_batch: 2000,
            linger: Duration::from_millis(50),
            session_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            stall_after: context_runtime::stall::DEFAULT_STALL_AFTER,
            stall_grace: context_runtime::stall::DEFAULT_STALL_GRACE,
        }
    }
}

impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "ROUTER_";
    const RENAMED: &'static [Renamed] = &[KAFKA_BOOTSTRAP_RENAMED];

    fn complete(&mut self) {
        if self.transactional_id.trim().is_empty() {
            self.transactional_id = context_runtime::pipeline::default_transactional_id("stream-router");
        }
    }

    fn check(&self) -> Vec<String> {
        let mut problems = self
            .kafka
            .check_owning("kafka", context_runtime::pipeline::DERIVED_SETTINGS);
        problems.extend(self.registry.check());
        problems.extend(self.stall().check());
        for (name, value) in [
            ("source_topic", &self.source_topic),
            ("deadletter_topic", &self.deadletter_topic),
            ("group_id", &self.group_id),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name} is empty"));
            }
        }
        if !(1..=10_000).contains(&self.new_topic_partitions) {
            problems.push(format!(
                "new_topic_partitions {} is not between 1 and 10000",
                self.new_topic_partitions
            ));
        }
        if self.timeout.is_zero() || self.timeout > context_runtime::pipeline::MAX_TIMEOUT {
            problems.push(format!(
                "timeout {:?} is not between 1ms and 15m (the brokers' default transaction.max.timeout.ms)",
                self.timeout
            ));
        }
        if !(64 << 10..=1 << 30).contains(&self.max_record_bytes) {
            problems.push(format!(
                "max_record_bytes {} is not between 65536 and 1073741824",
                self.max_record_bytes
            ));
        }
        if !(1..=50_000).contains(&self.max_batch) {
            problems.push(format!("max_batch {} is not between 1 and 50000", self.max_batch));
        }
        problems
    }
}

impl Config {
    /// Reads the file (if any) and the environment.
    pub fn load(path: Option<&Path>) -> Result<Loaded<Config>, ConfigError> {
        context_runtime::config::load::<Config>(path)
    }
}

impl Config {
    /// `stall_after` and `stall_grace` ([`context_runtime::stall`]).
    pub fn stall(&self) -> context_runtime::stall::StallSettings {
        context_runtime::stall::StallSettings {
            after: self.stall_after,
            grace: self.stall_grace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use context_runtime::config::vars as env;

    #[test]
    fn env_overrides_and_every_problem_is_listed() {
        let c = context_runtime::config::load_from::<Config>(
            None,
            env(&[
                ("ROUTER_GROUP_ID", "g2"),
                ("ROUTER_MAX_BATCH", "10"),
                ("ROUTER_DELIVERY", "at-least-once"),
            ]),
        )
        .unwrap()
        .config;
        assert_eq!((c.max_batch, c.group_id.as_str()), (10, "g2"));
        assert_eq!(c.delivery, Delivery::AtLeastOnce);
        assert!(c.transactional_id.starts_with("stream-router"));

        let err = context_runtime::config::load_from::<Config>(
            None,
            env(&[
                ("ROUTER_ADMIN_LISTEN", "nowhere"),
                ("ROUTER_DELIVERY", "twice"),
                ("ROUTER_LINGER", "soon"),
                ("ROUTER_MAX_BATCH", "0"),
                ("ROUTER_CREATE_TOPICS", "yes"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 5, "{err}");
        assert!(err.to_string().contains("ROUTER_CREATE_TOPICS"), "{err}");
    }
}
