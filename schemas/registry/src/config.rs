//! Configuration: a TOML file (`--config`) with environment overrides.

use std::net::SocketAddr;
use std::time::Duration;

use context_schemas::compat::Compatibility;
use context_schemas::duration::parse_duration;
use serde::Deserialize;

/// Settings of the `schema-registry` server. Every field has a default; the
/// environment variable named in each doc line overrides the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the REST API. `SCHEMA_REGISTRY_LISTEN`.
    pub listen: String,
    /// Kafka bootstrap servers. `SCHEMA_REGISTRY_KAFKA_BOOTSTRAP`.
    pub kafka_bootstrap: String,
    /// The single-partition topic that holds the registry's state. `SCHEMA_REGISTRY_TOPIC`.
    pub topic: String,
    /// Level used when neither the global nor a subject config was set.
    /// `SCHEMA_REGISTRY_DEFAULT_COMPATIBILITY`.
    pub default_compatibility: String,
    /// How long a write waits for the broker, such as `10s` or `500ms`. `SCHEMA_REGISTRY_TIMEOUT`.
    pub timeout: String,
    /// Create the state topic (compacted, one partition) when it is missing;
    /// otherwise a missing topic stops the start. `SCHEMA_REGISTRY_CREATE_TOPIC`.
    pub create_topic: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8081".into(),
            kafka_bootstrap: "127.0.0.1:9092".into(),
            topic: "_schemas".into(),
            default_compatibility: "BACKWARD".into(),
            timeout: "10s".into(),
            create_topic: false,
        }
    }
}

/// The configuration after validation.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub kafka_bootstrap: String,
    pub topic: String,
    pub default_compatibility: Compatibility,
    pub timeout: Duration,
    pub create_topic: bool,
}

impl Config {
    /// Reads the file (if any), applies environment overrides, validates, and
    /// reports every problem at once.
    pub fn load(path: Option<&std::path::Path>) -> Result<Settings, String> {
        let mut config: Config = context_runtime::read_config(path)?;
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for (var, field) in [
            ("SCHEMA_REGISTRY_LISTEN", &mut self.listen),
            ("SCHEMA_REGISTRY_KAFKA_BOOTSTRAP", &mut self.kafka_bootstrap),
            ("SCHEMA_REGISTRY_TOPIC", &mut self.topic),
            ("SCHEMA_REGISTRY_DEFAULT_COMPATIBILITY", &mut self.default_compatibility),
            ("SCHEMA_REGISTRY_TIMEOUT", &mut self.timeout),
        ] {
            if let Some(v) = get(var) {
                *field = v;
            }
        }
        if let Some(v) = get("SCHEMA_REGISTRY_CREATE_TOPIC") {
            self.create_topic = v
                .parse()
                .map_err(|_| format!("SCHEMA_REGISTRY_CREATE_TOPIC=`{v}` must be true or false"))?;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<Settings, String> {
        let mut problems = Vec::new();
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("listen `{}` is not host:port: {e}", self.listen)))
            .ok();
        if self.kafka_bootstrap.trim().is_empty() {
            problems.push("kafka_bootstrap is empty".into());
        }
        if self.topic.trim().is_empty() {
            problems.push("topic is empty".into());
        }
        let default_compatibility = self
            .default_compatibility
            .parse::<Compatibility>()
            .map_err(|e| problems.push(format!("default_compatibility: {e}")))
            .ok();
        let timeout = parse_duration(&self.timeout)
            .map_err(|e| problems.push(format!("timeout: {e}")))
            .ok();
        match (listen, default_compatibility, timeout) {
            (Some(listen), Some(default_compatibility), Some(timeout)) if problems.is_empty() => Ok(Settings {
                listen,
                kafka_bootstrap: self.kafka_bootstrap.clone(),
                topic: self.topic.clone(),
                default_compatibility,
                timeout,
                create_topic: self.create_topic,
            }),
            _ => Err(problems.join("\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_all_problems_are_reported() {
        let mut c: Config = toml::from_str("listen = \"127.0.0.1:9999\"\ntimeout = \"3s\"").unwrap();
        c.apply_env(|k| (k == "SCHEMA_REGISTRY_TOPIC").then(|| "_other".to_string()))
            .unwrap();
        let s = c.validate().unwrap();
        assert_eq!(
            (s.listen.port(), s.topic.as_str(), s.timeout),
            (9999, "_other", Duration::from_secs(3))
        );

        let bad = Config {
            listen: "nope".into(),
            default_compatibility: "SIDEWAYS".into(),
            timeout: "soon".into(),
            ..Config::default()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.lines().count(), 3, "{err}");
        assert!(
            toml::from_str::<Config>("lisen = \"x\"").is_err(),
            "unknown keys are refused"
        );
        let err = Config::default()
            .apply_env(|k| (k == "SCHEMA_REGISTRY_CREATE_TOPIC").then(|| "yes".to_string()))
            .unwrap_err();
        assert!(err.contains("SCHEMA_REGISTRY_CREATE_TOPIC"), "{err}");
    }
}
