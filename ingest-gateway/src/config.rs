//! Configuration of the gateway: a TOML file (`--config`) with `INGEST_*`
//! environment overrides. Every problem is reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use context_schemas::contract::topics;
use context_schemas::duration::parse_duration;
use serde::Deserialize;

/// Request limits. A request over any of them is answered 413.
#[derive(Debug, Clone, Deserialize, PartialEq)]
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

/// The configuration file. Durations are written like `10s`, `5m`, `30d`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `INGEST_LISTEN`: address of the HTTP(S) endpoint.
    pub listen: String,
    /// `INGEST_KAFKA_BOOTSTRAP`.
    pub kafka_bootstrap: String,
    /// `INGEST_REGISTRY_URL`: any Confluent-compatible schema registry.
    pub registry_url: String,
    /// `INGEST_EVENTS_TOPIC`.
    pub events_topic: String,
    /// `INGEST_DEADLETTER_TOPIC`.
    pub deadletter_topic: String,
    /// `INGEST_KEYS_FILE`: the API keys (hashes only), reloaded when it changes.
    pub keys_file: PathBuf,
    /// `INGEST_TLS_CERT` and `INGEST_TLS_KEY`: PEM files; TLS (HTTP/2 and
    /// HTTP/1.1) when both are set, plain HTTP otherwise.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub limits: Limits,
    /// `INGEST_PRODUCE_TIMEOUT`: how long a request waits for Kafka to
    /// acknowledge every event before it answers 503.
    pub produce_timeout: String,
    /// Producer queue bounds (librdkafka `queue.buffering.max.*`); a full
    /// queue answers 503 instead of buffering without limit.
    pub queue_max_messages: u32,
    pub queue_max_kbytes: u32,
    /// Decompressed bytes of requests being processed at once; over it, 503.
    pub max_in_flight_bytes: usize,
    /// Events whose corrected time lies further ahead of the server clock are rejected.
    pub max_future: String,
    /// Events whose corrected time lies further in the past are rejected.
    pub max_age: String,
    /// A repeated `batch_id` within this window is answered from memory.
    pub dedup_window: String,
    pub dedup_capacity: usize,
    /// HTTP worker threads.
    pub workers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            kafka_bootstrap: "127.0.0.1:9092".into(),
            registry_url: "http://127.0.0.1:8081".into(),
            events_topic: topics::EVENTS.into(),
            deadletter_topic: topics::DEAD_LETTER.into(),
            keys_file: PathBuf::from("keys.toml"),
            tls_cert: None,
            tls_key: None,
            limits: Limits::default(),
            produce_timeout: "10s".into(),
            queue_max_messages: 100_000,
            queue_max_kbytes: 256 * 1024,
            max_in_flight_bytes: 256 << 20,
            max_future: "1h".into(),
            max_age: "30d".into(),
            dedup_window: "10m".into(),
            dedup_capacity: 100_000,
            workers: 2,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub kafka_bootstrap: String,
    pub registry_url: String,
    pub events_topic: String,
    pub deadletter_topic: String,
    pub keys_file: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub limits: Limits,
    pub produce_timeout: Duration,
    pub queue_max_messages: u32,
    pub queue_max_kbytes: u32,
    pub max_in_flight_bytes: usize,
    pub max_future: Duration,
    pub max_age: Duration,
    pub dedup_window: Duration,
    pub dedup_capacity: usize,
    pub workers: usize,
}

impl Config {
    /// Reads the file (if any), applies the environment, validates.
    pub fn load(path: Option<&std::path::Path>) -> Result<Settings, String> {
        let mut config: Config = context_runtime::read_config(path)?;
        config.apply_env(|k| std::env::var(k).ok())?;
        config.validate()
    }

    /// Applies `INGEST_*` overrides.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for (var, field) in [
            ("INGEST_LISTEN", &mut self.listen),
            ("INGEST_KAFKA_BOOTSTRAP", &mut self.kafka_bootstrap),
            ("INGEST_REGISTRY_URL", &mut self.registry_url),
            ("INGEST_EVENTS_TOPIC", &mut self.events_topic),
            ("INGEST_DEADLETTER_TOPIC", &mut self.deadletter_topic),
            ("INGEST_PRODUCE_TIMEOUT", &mut self.produce_timeout),
            ("INGEST_MAX_FUTURE", &mut self.max_future),
            ("INGEST_MAX_AGE", &mut self.max_age),
            ("INGEST_DEDUP_WINDOW", &mut self.dedup_window),
        ] {
            if let Some(v) = get(var) {
                *field = v;
            }
        }
        if let Some(v) = get("INGEST_KEYS_FILE") {
            self.keys_file = v.into();
        }
        if let Some(v) = get("INGEST_TLS_CERT") {
            self.tls_cert = Some(v.into());
        }
        if let Some(v) = get("INGEST_TLS_KEY") {
            self.tls_key = Some(v.into());
        }
        let number = |var: &str| -> Result<Option<usize>, String> {
            get(var)
                .map(|v| v.parse::<usize>().map_err(|e| format!("{var}=`{v}`: {e}")))
                .transpose()
        };
        if let Some(n) = number("INGEST_MAX_BODY_BYTES")? {
            self.limits.max_body_bytes = n;
        }
        if let Some(n) = number("INGEST_MAX_DECOMPRESSED_BYTES")? {
            self.limits.max_decompressed_bytes = n;
        }
        if let Some(n) = number("INGEST_MAX_EVENTS")? {
            self.limits.max_events = n;
        }
        if let Some(n) = number("INGEST_MAX_IN_FLIGHT_BYTES")? {
            self.max_in_flight_bytes = n;
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<Settings, String> {
        let mut problems = Vec::new();
        let mut duration = |name: &str, v: &str| {
            parse_duration(v)
                .map_err(|e| problems.push(format!("{name}: {e}")))
                .unwrap_or_default()
        };
        let produce_timeout = duration("produce_timeout", &self.produce_timeout);
        let max_future = duration("max_future", &self.max_future);
        let max_age = duration("max_age", &self.max_age);
        let dedup_window = duration("dedup_window", &self.dedup_window);
        let listen = self
            .listen
            .parse::<SocketAddr>()
            .map_err(|e| problems.push(format!("listen `{}` is not host:port: {e}", self.listen)))
            .ok();
        for (name, value) in [
            ("kafka_bootstrap", &self.kafka_bootstrap),
            ("registry_url", &self.registry_url),
            ("events_topic", &self.events_topic),
            ("deadletter_topic", &self.deadletter_topic),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name} is empty"));
            }
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                problems.push("tls_cert and tls_key must be set together".into());
                None
            }
        };
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
        match listen {
            Some(listen) if problems.is_empty() => Ok(Settings {
                listen,
                kafka_bootstrap: self.kafka_bootstrap.clone(),
                registry_url: self.registry_url.clone(),
                events_topic: self.events_topic.clone(),
                deadletter_topic: self.deadletter_topic.clone(),
                keys_file: self.keys_file.clone(),
                tls,
                limits: self.limits.clone(),
                produce_timeout,
                queue_max_messages: self.queue_max_messages,
                queue_max_kbytes: self.queue_max_kbytes,
                max_in_flight_bytes: self.max_in_flight_bytes,
                max_future,
                max_age,
                dedup_window,
                dedup_capacity: self.dedup_capacity,
                workers: self.workers,
            }),
            _ => Err(problems.join("\n")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_problems_are_listed_together() {
        let s = Config::default().validate().unwrap();
        assert_eq!(s.listen.port(), 8080);
        assert_eq!(s.produce_timeout, Duration::from_secs(10));
        let bad = Config {
            listen: "x".into(),
            produce_timeout: "soon".into(),
            tls_cert: Some("c.pem".into()),
            ..Config::default()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.lines().count(), 3, "{err}");
        assert!(toml::from_str::<Config>("lissen = 1").is_err());
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c: Config = toml::from_str("events_topic = \"a\"\n[limits]\nmax_events = 5").unwrap();
        c.apply_env(|k| match k {
            "INGEST_EVENTS_TOPIC" => Some("b".into()),
            "INGEST_MAX_EVENTS" => Some("7".into()),
            _ => None,
        })
        .unwrap();
        let s = c.validate().unwrap();
        assert_eq!((s.events_topic.as_str(), s.limits.max_events), ("b", 7));
    }
}
