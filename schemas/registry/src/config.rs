//! Configuration: a TOML file (`--config`) with `SCHEMA_REGISTRY_*`
//! environment overrides, read by [`context_runtime::config`].

use std::net::SocketAddr;
use std::time::Duration;

use context_runtime::config::{Renamed, ServiceConfig};
use context_runtime::kafka::{KafkaSettings, KAFKA_BOOTSTRAP_RENAMED};
use context_schemas::compat::Compatibility;
use serde::{Deserialize, Serialize};

use crate::auth::AuthSettings;

/// Settings of the `schema-registry` server. Every key has a default and is
/// overridden by `SCHEMA_REGISTRY_` and its name in capitals
/// (`SCHEMA_REGISTRY_LISTEN`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the REST API.
    pub listen: SocketAddr,
    /// How the registry reaches Kafka (`[kafka]`).
    pub kafka: KafkaSettings,
    /// Who may call the API (`[auth]`): open when no users file is given.
    pub auth: AuthSettings,
    /// The single-partition, compacted topic that holds the registry's state.
    pub topic: String,
    /// Level used when neither the global nor a subject config was set.
    #[serde(with = "context_runtime::config::text")]
    pub default_compatibility: Compatibility,
    /// How long a write waits for the broker, such as `10s` or `500ms`.
    #[serde(with = "context_runtime::config::duration")]
    pub timeout: Duration,
    /// Create the state topic (compacted, one partition) when it is missing;
    /// otherwise a missing topic stops the start.
    pub create_topic: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            kafka: KafkaSettings::default(),
            auth: AuthSettings::default(),
            topic: "_schemas".into(),
            default_compatibility: Compatibility::Backward,
            timeout: Duration::from_secs(10),
            create_topic: false,
        }
    }
}

impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "SCHEMA_REGISTRY_";
    const RENAMED: &'static [Renamed] = &[KAFKA_BOOTSTRAP_RENAMED];

    fn check(&self) -> Vec<String> {
        let mut problems = self.kafka.check("kafka");
        if let Some(f) = &self.auth.users_file {
            if let Err(e) = std::fs::read(f) {
                problems.push(format!("auth.users_file: cannot read {}: {e}", f.display()));
            }
        }
        if self.topic.trim().is_empty() {
            problems.push("topic is empty".into());
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use context_runtime::config::load_from;

    use super::*;

    use context_runtime::config::vars as env;

    #[test]
    fn env_overrides_and_all_problems_are_reported() {
        let c = load_from::<Config>(
            None,
            env(&[
                ("SCHEMA_REGISTRY_TOPIC", "_other"),
                ("SCHEMA_REGISTRY_TIMEOUT", "500ms"),
            ]),
        )
        .unwrap()
        .config;
        assert_eq!((c.topic.as_str(), c.timeout), ("_other", Duration::from_millis(500)));
        let err = load_from::<Config>(
            None,
            env(&[
                ("SCHEMA_REGISTRY_LISTEN", "nowhere"),
                ("SCHEMA_REGISTRY_DEFAULT_COMPATIBILITY", "SOMETIMES"),
                ("SCHEMA_REGISTRY_CREATE_TOPIC", "yes"),
                ("SCHEMA_REGISTRY_TOPIC", " "),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
    }
}
