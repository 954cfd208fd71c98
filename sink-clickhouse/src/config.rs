//! Configuration of the sink: a TOML file (`--config`) with `SINK_*`
//! environment overrides, every problem reported at once.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use context_schemas::contract::topics;
use context_schemas::duration::parse_duration;
use serde::Deserialize;

/// A secret whose `Debug` does not show it.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// When a batch is inserted: whichever limit is reached first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchLimits {
    pub max_rows: usize,
    pub max_bytes: usize,
    /// Age of the oldest record in the batch, such as `5s`.
    pub max_age: String,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_rows: 50_000,
            max_bytes: 128 << 20,
            max_age: "5s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `SINK_ADMIN_LISTEN`: /healthz, /readyz, /metrics.
    pub admin_listen: String,
    /// `SINK_KAFKA_BOOTSTRAP`.
    pub kafka_bootstrap: String,
    /// `SINK_REGISTRY_URL`: any Confluent-compatible registry.
    pub registry_url: String,
    /// `SINK_CLICKHOUSE_URL`, `SINK_CLICKHOUSE_USER`, `SINK_CLICKHOUSE_PASSWORD`.
    pub clickhouse_url: String,
    pub clickhouse_user: String,
    pub clickhouse_password: Secret,
    /// `SINK_DATABASE`.
    pub database: String,
    /// `SINK_EVENTS_TOPIC`, `SINK_ACTIVITY_TOPIC`, `SINK_DEADLETTER_TOPIC`; an
    /// empty name turns that source off.
    pub events_topic: String,
    pub activity_topic: String,
    pub deadletter_topic: String,
    /// `SINK_GROUP_PREFIX`: consumer groups are `<prefix>-events`, `-activity`, `-deadletter`.
    pub group_prefix: String,
    pub session_timeout: String,
    pub max_poll_interval: String,
    pub batch: BatchLimits,
    /// Longest wait between insert retries while ClickHouse is unavailable.
    pub max_backoff: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: "127.0.0.1:9102".into(),
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
            session_timeout: "10s".into(),
            max_poll_interval: "5m".into(),
            batch: BatchLimits::default(),
            max_backoff: "30s".into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub admin_listen: SocketAddr,
    pub kafka_bootstrap: String,
    pub registry_url: String,
    pub clickhouse_url: String,
    pub clickhouse_user: String,
    pub clickhouse_password: Secret,
    pub database: String,
    pub events_topic: String,
    pub activity_topic: String,
    pub deadletter_topic: String,
    pub group_prefix: String,
    pub session_timeout: Duration,
    pub max_poll_interval: Duration,
    pub max_rows: usize,
    pub max_bytes: usize,
    pub max_age: Duration,
    pub max_backoff: Duration,
}

impl Config {
    pub fn load(path: Option<&std::path::Path>) -> Result<Settings, String> {
        let mut config: Config = context_runtime::read_config(path)?;
        config.apply_env(|k| std::env::var(k).ok());
        config.validate()
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        for (var, field) in [
            ("SINK_ADMIN_LISTEN", &mut self.admin_listen),
            ("SINK_KAFKA_BOOTSTRAP", &mut self.kafka_bootstrap),
            ("SINK_REGISTRY_URL", &mut self.registry_url),
            ("SINK_CLICKHOUSE_URL", &mut self.clickhouse_url),
            ("SINK_CLICKHOUSE_USER", &mut self.clickhouse_user),
            ("SINK_CLICKHOUSE_PASSWORD", &mut self.clickhouse_password.0),
            ("SINK_DATABASE", &mut self.database),
            ("SINK_EVENTS_TOPIC", &mut self.events_topic),
            ("SINK_ACTIVITY_TOPIC", &mut self.activity_topic),
            ("SINK_DEADLETTER_TOPIC", &mut self.deadletter_topic),
            ("SINK_GROUP_PREFIX", &mut self.group_prefix),
            ("SINK_BATCH_MAX_AGE", &mut self.batch.max_age),
        ] {
            if let Some(v) = get(var) {
                *field = v;
            }
        }
        if let Some(n) = get("SINK_BATCH_MAX_ROWS").and_then(|v| v.parse().ok()) {
            self.batch.max_rows = n;
        }
    }

    pub fn validate(&self) -> Result<Settings, String> {
        let mut problems = Vec::new();
        let mut duration = |name: &str, v: &str| {
            parse_duration(v)
                .map_err(|e| problems.push(format!("{name}: {e}")))
                .unwrap_or_default()
        };
        let session_timeout = duration("session_timeout", &self.session_timeout);
        let max_poll_interval = duration("max_poll_interval", &self.max_poll_interval);
        let max_age = duration("batch.max_age", &self.batch.max_age);
        let max_backoff = duration("max_backoff", &self.max_backoff);
        let admin_listen = self
            .admin_listen
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("admin_listen `{}`: {e}", self.admin_listen)))
            .ok();
        if self.database.is_empty() || !self.database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(format!("database `{}` must be letters, digits and _", self.database));
        }
        if self.events_topic.is_empty() && self.activity_topic.is_empty() && self.deadletter_topic.is_empty() {
            problems.push("every source topic is empty: nothing to do".into());
        }
        if self.batch.max_rows == 0 || self.batch.max_bytes == 0 {
            problems.push("batch.max_rows and batch.max_bytes must be above 0".into());
        }
        match admin_listen {
            Some(admin_listen) if problems.is_empty() => Ok(Settings {
                admin_listen,
                kafka_bootstrap: self.kafka_bootstrap.clone(),
                registry_url: self.registry_url.clone(),
                clickhouse_url: self.clickhouse_url.clone(),
                clickhouse_user: self.clickhouse_user.clone(),
                clickhouse_password: self.clickhouse_password.clone(),
                database: self.database.clone(),
                events_topic: self.events_topic.clone(),
                activity_topic: self.activity_topic.clone(),
                deadletter_topic: self.deadletter_topic.clone(),
                group_prefix: self.group_prefix.clone(),
                session_timeout,
                max_poll_interval,
                max_rows: self.batch.max_rows,
                max_bytes: self.batch.max_bytes,
                max_age,
                max_backoff,
            }),
            _ => Err(problems.join("\n")),
        }
    }
}

impl Settings {
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
        if !self.clickhouse_password.0.is_empty() {
            c = c.with_password(&self.clickhouse_password.0);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show_and_problems_are_listed() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "SINK_CLICKHOUSE_PASSWORD").then(|| "hunter2".to_string()));
        assert!(!format!("{c:?}").contains("hunter2"));
        let bad = Config {
            database: "x;DROP".into(),
            max_backoff: "later".into(),
            ..Config::default()
        };
        assert_eq!(bad.validate().unwrap_err().lines().count(), 2);
    }
}
