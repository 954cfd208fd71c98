//! Configuration of `serve` and `replay`: a TOML file (`--config`) with
//! `ENRICH_*` environment overrides; every problem is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;

use context_schemas::contract::topics;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `ENRICH_KAFKA_BOOTSTRAP`.
    pub kafka_bootstrap: String,
    /// `ENRICH_REGISTRY_URL`.
    pub registry_url: String,
    /// `ENRICH_MOTION_TOPIC`, `ENRICH_ACTIVITY_TOPIC`.
    pub motion_topic: String,
    pub activity_topic: String,
    /// `ENRICH_GROUP_ID`: the live group of `serve`.
    pub group_id: String,
    /// `ENRICH_ADMIN_LISTEN`: /healthz, /readyz, /metrics of `serve`.
    pub admin_listen: String,
    /// `ENRICH_MODEL`: the model artifact (`--model` overrides it).
    pub model: Option<PathBuf>,
    /// Records tagged per batch (and per commit).
    pub max_batch: usize,
    pub session_timeout_ms: u64,
    /// `ENRICH_DEADLETTER_TOPIC`: where windows that cannot be decoded go.
    pub deadletter_topic: String,
    /// `ENRICH_DELIVERY`: `exactly-once` (tags and offsets in one Kafka
    /// transaction) or `at-least-once` (a broker without transactions).
    pub delivery: String,
    /// `ENRICH_TRANSACTIONAL_ID`: stable per replica; empty means
    /// `enrich-activity-<host name>`.
    pub transactional_id: String,
    /// `ENRICH_MIN_CONFIDENCE`: below this probability (0–1) a window is
    /// tagged `unknown` instead of its most likely class.
    pub min_confidence: f32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kafka_bootstrap: "127.0.0.1:9092".into(),
            registry_url: "http://127.0.0.1:8081".into(),
            motion_topic: topics::MOTION.into(),
            activity_topic: topics::ACTIVITY.into(),
            group_id: "enrich-activity".into(),
            admin_listen: "127.0.0.1:9103".into(),
            model: None,
            max_batch: 500,
            session_timeout_ms: 10_000,
            deadletter_topic: topics::DEAD_LETTER.into(),
            delivery: "exactly-once".into(),
            transactional_id: String::new(),
            min_confidence: crate::serve::DEFAULT_MIN_CONFIDENCE,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub kafka_bootstrap: String,
    pub registry_url: String,
    pub motion_topic: String,
    pub activity_topic: String,
    pub group_id: String,
    pub admin_listen: SocketAddr,
    pub model: PathBuf,
    pub max_batch: usize,
    pub session_timeout_ms: u64,
    pub deadletter_topic: String,
    pub delivery: context_runtime::pipeline::Delivery,
    pub transactional_id: String,
    pub min_confidence: f32,
}

impl Config {
    /// Reads the file (if any), applies the environment and `model`, validates.
    pub fn load(path: Option<&std::path::Path>, model: Option<PathBuf>) -> Result<Settings, String> {
        let mut config: Config = context_runtime::read_config(path)?;
        config.apply_env(|k| std::env::var(k).ok());
        if model.is_some() {
            config.model = model;
        }
        config.validate()
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        for (var, field) in [
            ("ENRICH_KAFKA_BOOTSTRAP", &mut self.kafka_bootstrap),
            ("ENRICH_REGISTRY_URL", &mut self.registry_url),
            ("ENRICH_MOTION_TOPIC", &mut self.motion_topic),
            ("ENRICH_ACTIVITY_TOPIC", &mut self.activity_topic),
            ("ENRICH_GROUP_ID", &mut self.group_id),
            ("ENRICH_ADMIN_LISTEN", &mut self.admin_listen),
            ("ENRICH_DEADLETTER_TOPIC", &mut self.deadletter_topic),
            ("ENRICH_DELIVERY", &mut self.delivery),
            ("ENRICH_TRANSACTIONAL_ID", &mut self.transactional_id),
        ] {
            if let Some(v) = get(var) {
                *field = v;
            }
        }
        if let Some(m) = get("ENRICH_MODEL") {
            self.model = Some(m.into());
        }
        if let Some(v) = get("ENRICH_MIN_CONFIDENCE") {
            // A malformed value becomes NaN and is refused by `validate`.
            self.min_confidence = v.parse().unwrap_or(f32::NAN);
        }
    }

    pub fn validate(&self) -> Result<Settings, String> {
        let mut problems = Vec::new();
        let admin_listen = self
            .admin_listen
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("admin_listen `{}`: {e}", self.admin_listen)))
            .ok();
        if self.model.is_none() {
            problems.push("no model: give --model, ENRICH_MODEL or `model` in the file".into());
        }
        for (name, v) in [
            ("kafka_bootstrap", &self.kafka_bootstrap),
            ("motion_topic", &self.motion_topic),
            ("activity_topic", &self.activity_topic),
            ("group_id", &self.group_id),
        ] {
            if v.trim().is_empty() {
                problems.push(format!("{name} is empty"));
            }
        }
        if !(1..=50_000).contains(&self.max_batch) {
            problems.push(format!("max_batch {} is not between 1 and 50000", self.max_batch));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            problems.push(format!("min_confidence {} is not between 0 and 1", self.min_confidence));
        }
        let delivery = self
            .delivery
            .parse::<context_runtime::pipeline::Delivery>()
            .map_err(|e| problems.push(format!("delivery: {e}")))
            .ok();
        match (admin_listen, &self.model, delivery) {
            (Some(admin_listen), Some(model), Some(delivery)) if problems.is_empty() => Ok(Settings {
                kafka_bootstrap: self.kafka_bootstrap.clone(),
                registry_url: self.registry_url.clone(),
                motion_topic: self.motion_topic.clone(),
                activity_topic: self.activity_topic.clone(),
                group_id: self.group_id.clone(),
                admin_listen,
                model: model.clone(),
                max_batch: self.max_batch,
                session_timeout_ms: self.session_timeout_ms,
                deadletter_topic: self.deadletter_topic.clone(),
                delivery,
                transactional_id: if self.transactional_id.trim().is_empty() {
                    context_runtime::pipeline::default_transactional_id("enrich-activity")
                } else {
                    self.transactional_id.clone()
                },
                min_confidence: self.min_confidence,
            }),
            _ => Err(problems.join("\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_overrides_the_file_and_problems_are_listed() {
        let mut c: Config = toml::from_str("motion_topic = \"m\"\nmodel = \"a.json\"").unwrap();
        c.apply_env(|k| (k == "ENRICH_MOTION_TOPIC").then(|| "n".to_string()));
        let s = c.validate().unwrap();
        assert_eq!((s.motion_topic.as_str(), s.model.to_str()), ("n", Some("a.json")));
        let bad = Config {
            admin_listen: "x".into(),
            max_batch: 0,
            ..Config::default()
        };
        assert_eq!(bad.validate().unwrap_err().lines().count(), 3);
        assert!(toml::from_str::<Config>("modle = 1").is_err());
    }
}
