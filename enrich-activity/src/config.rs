//! Configuration of `serve` and `replay`: a TOML file (`--config`) with
//! `ENRICH_*` environment overrides, read by [`context_runtime::config`]
//! (every problem reported at once).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use context_runtime::config::{ConfigError, Loaded, Renamed, ServiceConfig};
use context_runtime::kafka::{KafkaSettings, KAFKA_BOOTSTRAP_RENAMED};
use context_runtime::pipeline::Delivery;
use context_runtime::registry::RegistrySettings;
use context_schemas::contract::topics;
use serde::{Deserialize, Serialize};

/// Each key is overridden by `ENRICH_` and its name in capitals
/// (`ENRICH_MAX_BATCH`). `session_timeout_ms` (milliseconds) is still read,
/// with a deprecation warning, as `session_timeout`.
// Unknown keys are refused by the loader (`context_runtime::config`);
// serde's `deny_unknown_fields` does not work beside `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How the tagger reaches Kafka (`[kafka]`: bootstrap, security).
    pub kafka: KafkaSettings,
    /// Any Confluent-compatible registry: `registry_url`,
    /// `registry_username`, `registry_password`, `registry_ca_file`.
    #[serde(flatten)]
    pub registry: RegistrySettings,
    pub motion_topic: String,
    pub activity_topic: String,
    /// The live group of `serve`.
    pub group_id: String,
    /// /healthz, /readyz, /metrics of `serve`.
    pub admin_listen: SocketAddr,
    /// The model artifact (`--model` overrides it); required.
    pub model: Option<PathBuf>,
    /// Records tagged per batch (and per commit).
    pub max_batch: usize,
    /// Kafka consumer group session timeout, such as `10s`.
    #[serde(with = "context_runtime::config::duration")]
    pub session_timeout: Duration,
    /// Where windows that cannot be decoded go, with their bytes.
    pub deadletter_topic: String,
    /// The forget ledger: windows of a forgotten install captured up to its
    /// request are not tagged, by `serve` nor by `replay`. Empty turns that off.
    pub forget_topic: String,
    /// `exactly-once` (tags and offsets in one Kafka transaction) or
    /// `at-least-once` (a broker without transactions).
    pub delivery: Delivery,
    /// Stable per replica; empty means `enrich-activity-<host name>` (a
    /// second tagger on the same host takes `enrich-activity-<host>-2`).
    pub transactional_id: String,
    /// The largest record `serve` produces (librdkafka's
    /// `message.max.bytes`); a tag or dead letter the broker refuses for
    /// good is set aside in `deadletter_topic`, cut to a stub if need be.
    pub max_record_bytes: usize,
    /// Below this probability (0–1) a window is tagged `unknown` instead of
    /// its most likely class. Unset (the default): the model's own
    /// threshold (`gate.min_confidence` of the artifact, part of its
    /// version), the same in `serve` and `replay`.
    pub min_confidence: Option<f32>,
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
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            motion_topic: topics::MOTION.into(),
            activity_topic: topics::ACTIVITY.into(),
            group_id: "enrich-activity".into(),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9103)),
            model: None,
            max_batch: 500,
            session_timeout: Duration::from_secs(10),
            deadletter_topic: topics::DEAD_LETTER.into(),
            forget_topic: topics::FORGET.into(),
            delivery: Delivery::ExactlyOnce,
            transactional_id: String::new(),
            max_record_bytes: context_runtime::pipeline::DEFAULT_MAX_RECORD_BYTES,
            min_confidence: None,
            stall_after: context_runtime::stall::DEFAULT_STALL_AFTER,
            stall_grace: context_runtime::stall::DEFAULT_STALL_GRACE,
        }
    }
}

impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "ENRICH_";
    const RENAMED: &'static [Renamed] = &[
        Renamed {
            old: "session_timeout_ms",
            new: "session_timeout",
            convert: context_runtime::config::millis_to_duration,
        },
        KAFKA_BOOTSTRAP_RENAMED,
    ];

    fn complete(&mut self) {
        if self.transactional_id.trim().is_empty() {
            self.transactional_id = context_runtime::pipeline::default_transactional_id("enrich-activity");
        }
    }

    fn check(&self) -> Vec<String> {
        let mut problems = self
            .kafka
            .check_owning("kafka", context_runtime::pipeline::DERIVED_SETTINGS);
        problems.extend(self.registry.check());
        problems.extend(self.stall().check());
        if self.model.is_none() {
            problems.push("no model: give --model, ENRICH_MODEL or `model` in the file".into());
        }
        for (name, v) in [
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
        if !(64 << 10..=1 << 30).contains(&self.max_record_bytes) {
            problems.push(format!(
                "max_record_bytes {} is not between 65536 and 1073741824",
                self.max_record_bytes
            ));
        }
        if let Some(m) = self.min_confidence.filter(|m| !(0.0..=1.0).contains(m)) {
            problems.push(format!("min_confidence {m} is not between 0 and 1"));
        }
        problems
    }
}

impl Config {
    /// Reads the file (if any) and the environment; `model` (from the
    /// command line) overrides both. An empty `transactional_id` becomes
    /// `enrich-activity-<host name>`.
    pub fn load(path: Option<&Path>, model: Option<PathBuf>) -> Result<Loaded<Config>, ConfigError> {
        let mut env = context_runtime::config::process_env::<Config>();
        if let Some(m) = model {
            env.retain(|(k, _)| k != "ENRICH_MODEL");
            env.push(("ENRICH_MODEL".into(), m.to_string_lossy().into_owned()));
        }
        context_runtime::config::load_from::<Config>(path, env)
    }

    /// The model artifact (present once loaded: `check` requires it).
    pub fn model_path(&self) -> &Path {
        self.model.as_deref().unwrap_or(Path::new("model.json"))
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
    fn the_environment_overrides_the_file_and_problems_are_listed() {
        let file = std::env::temp_dir().join(format!("enrich-config-{}.toml", std::process::id()));
        std::fs::write(
            &file,
            "motion_topic = \"m\"\nmodel = \"a.json\"\nsession_timeout_ms = 6000\n",
        )
        .unwrap();
        let loaded =
            context_runtime::config::load_from::<Config>(Some(&file), env(&[("ENRICH_MOTION_TOPIC", "n")])).unwrap();
        std::fs::remove_file(&file).unwrap();
        let c = &loaded.config;
        assert_eq!(
            (c.motion_topic.as_str(), c.model_path().to_str()),
            ("n", Some("a.json"))
        );
        assert_eq!(c.session_timeout, Duration::from_secs(6));
        assert!(
            loaded.warnings[0].contains("session_timeout_ms"),
            "{:?}",
            loaded.warnings
        );
        let err = context_runtime::config::load_from::<Config>(
            None,
            env(&[
                ("ENRICH_ADMIN_LISTEN", "x"),
                ("ENRICH_MAX_BATCH", "0"),
                ("ENRICH_MIN_CONFIDENCE", "high"),
            ]),
        )
        .unwrap_err();
        // admin_listen, min_confidence, max_batch and the missing model.
        assert_eq!(err.0.len(), 4, "{err}");
    }
}
