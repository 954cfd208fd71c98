//! Configuration: a TOML file (`--config`) with `ROUTER_*` environment
//! overrides. Every problem is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use context_runtime::pipeline::Delivery;
use context_schemas::duration::parse_duration;
use serde::Deserialize;

/// Settings of `stream-router run`. The environment variable in each doc
/// line overrides the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Admin endpoints (`/healthz`, `/readyz`, `/metrics`). `ROUTER_ADMIN_LISTEN`.
    pub admin_listen: String,
    /// `ROUTER_KAFKA_BOOTSTRAP`.
    pub kafka_bootstrap: String,
    /// Any Confluent-compatible registry. `ROUTER_REGISTRY_URL`.
    pub registry_url: String,
    /// The raw events. `ROUTER_SOURCE_TOPIC`.
    pub source_topic: String,
    /// Where records that cannot be routed go. `ROUTER_DEADLETTER_TOPIC`.
    pub deadletter_topic: String,
    /// `ROUTER_GROUP_ID`.
    pub group_id: String,
    /// The rules (see `stream-router check-rules --help`); re-read when it
    /// changes. `ROUTER_RULES_FILE`.
    pub rules_file: PathBuf,
    /// `exactly-once` (Kafka transactions) or `at-least-once`. `ROUTER_DELIVERY`.
    pub delivery: String,
    /// With exactly-once: run at least once, with a warning, on a broker
    /// without transactions instead of refusing to start. `ROUTER_ALLOW_FALLBACK`.
    pub allow_fallback: bool,
    /// Stable per replica; empty means `stream-router-<host name>`.
    /// `ROUTER_TRANSACTIONAL_ID`.
    pub transactional_id: String,
    /// Create missing target topics at start (else the start is refused,
    /// naming them). `ROUTER_CREATE_TOPICS`.
    pub create_topics: bool,
    /// Partitions of a topic the router creates. `ROUTER_NEW_TOPIC_PARTITIONS`.
    pub new_topic_partitions: i32,
    /// Records per transaction at most. `ROUTER_MAX_BATCH`.
    pub max_batch: usize,
    /// How long a batch waits for more records after its first. `ROUTER_LINGER`.
    pub linger: String,
    /// `ROUTER_SESSION_TIMEOUT`.
    pub session_timeout: String,
    /// How long a Kafka call may take. `ROUTER_TIMEOUT`.
    pub timeout: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_listen: "127.0.0.1:9101".into(),
            kafka_bootstrap: "127.0.0.1:9092".into(),
            registry_url: "http://127.0.0.1:8081".into(),
            source_topic: context_schemas::contract::topics::EVENTS.into(),
            deadletter_topic: context_schemas::contract::topics::DEAD_LETTER.into(),
            group_id: "stream-router".into(),
            rules_file: PathBuf::from("rules.toml"),
            delivery: "exactly-once".into(),
            allow_fallback: false,
            transactional_id: String::new(),
            create_topics: false,
            new_topic_partitions: 2,
            // Each transaction costs about 100 ms on the local broker: large
            // batches amortise it (docs/stream-router.md, "Throughput").
            max_batch: 2000,
            linger: "50ms".into(),
            session_timeout: "10s".into(),
            timeout: "30s".into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub admin_listen: SocketAddr,
    pub kafka_bootstrap: String,
    pub registry_url: String,
    pub source_topic: String,
    pub deadletter_topic: String,
    pub group_id: String,
    pub rules_file: PathBuf,
    pub delivery: Delivery,
    pub allow_fallback: bool,
    pub transactional_id: String,
    pub create_topics: bool,
    pub new_topic_partitions: i32,
    pub max_batch: usize,
    pub linger: Duration,
    pub session_timeout: Duration,
    pub timeout: Duration,
}

impl Config {
    /// Reads the file (if any), applies the environment, validates.
    pub fn load(path: Option<&std::path::Path>) -> Result<Settings, String> {
        let mut config: Config = context_runtime::read_config(path)?;
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for (var, field) in [
            ("ROUTER_ADMIN_LISTEN", &mut self.admin_listen),
            ("ROUTER_KAFKA_BOOTSTRAP", &mut self.kafka_bootstrap),
            ("ROUTER_REGISTRY_URL", &mut self.registry_url),
            ("ROUTER_SOURCE_TOPIC", &mut self.source_topic),
            ("ROUTER_DEADLETTER_TOPIC", &mut self.deadletter_topic),
            ("ROUTER_GROUP_ID", &mut self.group_id),
            ("ROUTER_DELIVERY", &mut self.delivery),
            ("ROUTER_TRANSACTIONAL_ID", &mut self.transactional_id),
            ("ROUTER_LINGER", &mut self.linger),
            ("ROUTER_SESSION_TIMEOUT", &mut self.session_timeout),
            ("ROUTER_TIMEOUT", &mut self.timeout),
        ] {
            if let Some(v) = get(var) {
                *field = v;
            }
        }
        if let Some(v) = get("ROUTER_RULES_FILE") {
            self.rules_file = v.into();
        }
        let mut problems = Vec::new();
        let mut flag = |var: &str, field: &mut bool| {
            if let Some(v) = get(var) {
                match v.parse() {
                    Ok(b) => *field = b,
                    Err(_) => problems.push(format!("{var}=`{v}` must be true or false")),
                }
            }
        };
        flag("ROUTER_ALLOW_FALLBACK", &mut self.allow_fallback);
        flag("ROUTER_CREATE_TOPICS", &mut self.create_topics);
        if let Some(v) = get("ROUTER_NEW_TOPIC_PARTITIONS") {
            match v.parse() {
                Ok(n) => self.new_topic_partitions = n,
                Err(e) => problems.push(format!("ROUTER_NEW_TOPIC_PARTITIONS=`{v}`: {e}")),
            }
        }
        if let Some(v) = get("ROUTER_MAX_BATCH") {
            match v.parse() {
                Ok(n) => self.max_batch = n,
                Err(e) => problems.push(format!("ROUTER_MAX_BATCH=`{v}`: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }

    pub fn validate(&self) -> Result<Settings, String> {
        let mut problems = Vec::new();
        let admin_listen = self
            .admin_listen
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("admin_listen `{}` is not host:port: {e}", self.admin_listen)))
            .ok();
        for (name, value) in [
            ("kafka_bootstrap", &self.kafka_bootstrap),
            ("registry_url", &self.registry_url),
            ("source_topic", &self.source_topic),
            ("deadletter_topic", &self.deadletter_topic),
            ("group_id", &self.group_id),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name} is empty"));
            }
        }
        let delivery = self
            .delivery
            .parse::<Delivery>()
            .map_err(|e| problems.push(format!("delivery: {e}")))
            .ok();
        if !(1..=10_000).contains(&self.new_topic_partitions) {
            problems.push(format!(
                "new_topic_partitions {} is not between 1 and 10000",
                self.new_topic_partitions
            ));
        }
        if !(1..=50_000).contains(&self.max_batch) {
            problems.push(format!("max_batch {} is not between 1 and 50000", self.max_batch));
        }
        let mut duration = |name: &str, v: &str| {
            parse_duration(v)
                .map_err(|e| problems.push(format!("{name}: {e}")))
                .ok()
        };
        let linger = duration("linger", &self.linger);
        let session_timeout = duration("session_timeout", &self.session_timeout);
        let timeout = duration("timeout", &self.timeout);
        match (admin_listen, delivery, linger, session_timeout, timeout) {
            (Some(admin_listen), Some(delivery), Some(linger), Some(session_timeout), Some(timeout))
                if problems.is_empty() =>
            {
                Ok(Settings {
                    admin_listen,
                    kafka_bootstrap: self.kafka_bootstrap.clone(),
                    registry_url: self.registry_url.clone(),
                    source_topic: self.source_topic.clone(),
                    deadletter_topic: self.deadletter_topic.clone(),
                    group_id: self.group_id.clone(),
                    rules_file: self.rules_file.clone(),
                    delivery,
                    allow_fallback: self.allow_fallback,
                    transactional_id: if self.transactional_id.trim().is_empty() {
                        context_runtime::pipeline::default_transactional_id("stream-router")
                    } else {
                        self.transactional_id.clone()
                    },
                    create_topics: self.create_topics,
                    new_topic_partitions: self.new_topic_partitions,
                    max_batch: self.max_batch,
                    linger,
                    session_timeout,
                    timeout,
                })
            }
            _ => Err(problems.join("\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_every_problem_is_listed() {
        let mut c: Config = toml::from_str("max_batch = 10\ndelivery = \"at-least-once\"").unwrap();
        c.apply_env(|k| (k == "ROUTER_GROUP_ID").then(|| "g2".to_string()))
            .unwrap();
        let s = c.validate().unwrap();
        assert_eq!((s.max_batch, s.group_id.as_str()), (10, "g2"));
        assert_eq!(s.delivery, Delivery::AtLeastOnce);
        assert!(s.transactional_id.starts_with("stream-router"));

        let bad = Config {
            admin_listen: "nowhere".into(),
            delivery: "twice".into(),
            linger: "soon".into(),
            max_batch: 0,
            ..Config::default()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.lines().count(), 4, "{err}");
        let err = Config::default()
            .apply_env(|k| (k == "ROUTER_CREATE_TOPICS").then(|| "yes".to_string()))
            .unwrap_err();
        assert!(err.contains("ROUTER_CREATE_TOPICS"), "{err}");
        assert!(
            toml::from_str::<Config>("rules = \"x\"").is_err(),
            "unknown keys are refused"
        );
    }
}
