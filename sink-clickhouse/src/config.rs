//! Configuration of the sink: a TOML file (`--config`) with `SINK_*`
//! environment overrides, read by [`context_runtime::config`] (every problem
//! reported at once).

use std::net::SocketAddr;
use std::time::Duration;

pub use context_runtime::config::Secret;
use context_runtime::config::{Renamed, ServiceConfig};
use context_runtime::kafka::{KafkaSettings, KAFKA_BOOTSTRAP_RENAMED};
use context_runtime::registry::RegistrySettings;
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
// Unknown keys are refused by the loader (`context_runtime::config`);
// serde's `deny_unknown_fields` does not work beside `flatten`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// /healthz, /readyz, /metrics.
    pub admin_listen: SocketAddr,
    /// How the sink reaches Kafka (`[kafka]`: bootstrap, security).
    pub kafka: KafkaSettings,
    /// Any Confluent-compatible registry: `registry_url`,
    /// `registry_username`, `registry_password`, `registry_ca_file`.
    #[serde(flatten)]
    pub registry: RegistrySettings,
    /// `http://` or `https://` (TLS: the system's CAs, or
    /// `clickhouse_ca_file`).
    pub clickhouse_url: String,
    pub clickhouse_user: String,
    /// Never printed.
    pub clickhouse_password: Secret,
    /// PEM file of the CA(s) that sign ClickHouse's certificate.
    pub clickhouse_ca_file: Option<std::path::PathBuf>,
    pub database: String,
    /// A ClickHouse cluster (docs/scaling.md): its servers' URLs, shards
    /// separated by `;` and the replicas of one shard by `,`, such as
    /// `http://ch1:8123,http://ch2:8123;http://ch3:8123,http://ch4:8123`, in
    /// the order of the cluster's `remote_servers`. Empty: one server,
    /// `clickhouse_url`. `migrate --cluster` runs what ClickHouse cannot run
    /// ON CLUSTER on each of them.
    pub clickhouse_shards: String,
    /// With `clickhouse_shards`: 0 (the default), an insert is confirmed when
    /// one replica of its shard wrote it (the others fetch it from there; a
    /// disk lost before they did loses it); N, when N replicas did
    /// (ClickHouse's `insert_quorum`: a shard with fewer replicas up refuses,
    /// and the sink waits).
    pub insert_quorum: u32,
    /// An empty topic name turns that source off.
    pub events_topic: String,
    pub activity_topic: String,
    pub deadletter_topic: String,
    /// The forget ledger (docs/privacy.md): rows of a forgotten install
    /// captured up to its request are not inserted, and `run` erases the
    /// rows already stored. Empty turns both off.
    pub forget_topic: String,
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
    /// Longest one insert may take, from connecting to ClickHouse's answer;
    /// beyond it the insert counts as failed and is retried (a ClickHouse that
    /// accepts and never answers). Below `max_poll_interval`, which the wait
    /// would otherwise exceed and cost the sink its partitions.
    #[serde(with = "context_runtime::config::duration")]
    pub insert_timeout: Duration,
    /// Work (records to fetch, or received and not committed) without
    /// progress for this long turns `/readyz` 503 with what is stuck; zero
    /// turns the watch off. Longer than `max_backoff` and `insert_timeout`.
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
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9102)),
            kafka: KafkaSettings::default(),
            registry: RegistrySettings::default(),
            clickhouse_url: "http://127.0.0.1:8123".into(),
            clickhouse_user: "default".into(),
            clickhouse_password: Secret::default(),
            clickhouse_ca_file: None,
            database: "context".into(),
            clickhouse_shards: String::new(),
            insert_quorum: 0,
            events_topic: topics::EVENTS.into(),
            activity_topic: topics::ACTIVITY.into(),
            deadletter_topic: topics::DEAD_LETTER.into(),
            forget_topic: topics::FORGET.into(),
            group_prefix: "sink-clickhouse".into(),
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            batch: BatchLimits::default(),
            max_backoff: Duration::from_secs(30),
            insert_timeout: Duration::from_secs(120),
            stall_after: context_runtime::stall::DEFAULT_STALL_AFTER,
            stall_grace: context_runtime::stall::DEFAULT_STALL_GRACE,
        }
    }
}

impl ServiceConfig for Config {
    const ENV_PREFIX: &'static str = "SINK_";
    const RENAMED: &'static [Renamed] = &[KAFKA_BOOTSTRAP_RENAMED];

    fn check(&self) -> Vec<String> {
        let mut problems = self.kafka.check_owning("kafka", DERIVED_SETTINGS);
        problems.extend(self.registry.check());
        problems.extend(self.stall().check());
        let url = self.clickhouse_url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            problems.push(format!("clickhouse_url {url:?} must start with http:// or https://"));
        }
        if let Some(ca) = &self.clickhouse_ca_file {
            match std::fs::read(ca)
                .map_err(|e| e.to_string())
                .and_then(|pem| pem_bundle(&pem))
            {
                Ok(_) if url.starts_with("http://") => problems
                    .push("clickhouse_ca_file is set but clickhouse_url is http://: write https:// to use TLS".into()),
                Ok(_) => {}
                Err(e) => problems.push(format!("clickhouse_ca_file {}: {e}", ca.display())),
            }
        }
        match parse_shards(&self.clickhouse_shards) {
            Err(e) => problems.push(format!("clickhouse_shards: {e}")),
            Ok(shards) => {
                let fewest = shards.iter().map(Vec::len).min().unwrap_or(0);
                if self.insert_quorum > 0 && self.insert_quorum as usize > fewest {
                    problems.push(format!(
                        "insert_quorum {} needs clickhouse_shards with at least that many replicas in every shard \
                         (the smallest has {fewest})",
                        self.insert_quorum
                    ));
                }
            }
        }
        if self.database.is_empty() || !self.database.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(format!("database `{}` must be letters, digits and _", self.database));
        }
        if self.events_topic.is_empty() && self.activity_topic.is_empty() && self.deadletter_topic.is_empty() {
            problems.push("every source topic is empty: nothing to do".into());
        }
        if self.batch.max_rows == 0 || self.batch.max_bytes == 0 {
            problems.push("batch.max_rows and batch.max_bytes must be above 0".into());
        }
        if self.insert_timeout.is_zero() || self.insert_timeout >= self.max_poll_interval {
            problems.push(format!(
                "insert_timeout ({:?}) must be above 0 and below max_poll_interval ({:?}): an insert that waits \
                 longer costs the sink its partitions",
                self.insert_timeout, self.max_poll_interval
            ));
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

    /// The servers of `clickhouse_shards`, by shard (empty: one server).
    pub fn shards(&self) -> Vec<Vec<String>> {
        parse_shards(&self.clickhouse_shards).unwrap_or_default()
    }

    /// A client for inserts (LZ4) and one for queries (uncompressed: against
    /// ClickHouse 18.16 the crate's LZ4 response path yields no rows).
    pub fn clickhouse(&self, compressed: bool) -> clickhouse::Client {
        self.clickhouse_at(&self.clickhouse_url, compressed)
    }

    /// [`Config::clickhouse`] for the server at `url` (one of `clickhouse_shards`).
    pub fn clickhouse_at(&self, url: &str, compressed: bool) -> clickhouse::Client {
        let base = match self.clickhouse_tls() {
            Some(connector) => {
                let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                http.set_keepalive(Some(Duration::from_secs(60)));
                http.enforce_http(false);
                let https = hyper_tls::HttpsConnector::from((http, connector));
                let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    // Below ClickHouse's own keep-alive of 3 s (as the crate's default).
                    .pool_idle_timeout(Duration::from_secs(2))
                    .build(https);
                clickhouse::Client::with_http_client(client)
            }
            None => clickhouse::Client::default(),
        };
        let mut c = base
            .with_url(url)
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

impl Config {
    /// TLS trusting `clickhouse_ca_file` (and the system's CAs), when set;
    /// `None` for the crate's default client (system CAs for `https://`).
    fn clickhouse_tls(&self) -> Option<tokio_native_tls::TlsConnector> {
        let ca = self.clickhouse_ca_file.as_ref()?;
        // Checked at start (`check`): a file that no longer reads is a
        // client without the CA, whose inserts then fail with the reason.
        let mut b = native_tls::TlsConnector::builder();
        match std::fs::read(ca)
            .map_err(|e| e.to_string())
            .and_then(|pem| pem_bundle(&pem))
        {
            Ok(certs) => {
                for cert in certs {
                    b.add_root_certificate(cert);
                }
            }
            // Only the system's CAs then: the inserts fail on an unknown
            // issuer and say so.
            Err(e) => tracing::error!(file = %ca.display(), error = %e, "clickhouse_ca_file cannot be used"),
        }
        match b.build() {
            Ok(c) => Some(c.into()),
            Err(e) => {
                tracing::error!(error = %e, "cannot set up TLS for ClickHouse");
                None
            }
        }
    }
}

/// Every certificate of a PEM file (a CA bundle may hold several).
fn pem_bundle(pem: &[u8]) -> Result<Vec<native_tls::Certificate>, String> {
    let text = String::from_utf8_lossy(pem);
    let end = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(stop) = rest[start..].find(end) else { break };
        let block = &rest[start..start + stop + end.len()];
        certs.push(
            native_tls::Certificate::from_pem(block.as_bytes()).map_err(|e| format!("not a PEM certificate: {e}"))?,
        );
        rest = &rest[start + stop + end.len()..];
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

/// librdkafka settings the sink derives from keys of its own.
pub const DERIVED_SETTINGS: &[(&str, &str)] = &[
    ("session.timeout.ms", "write `session_timeout`"),
    ("max.poll.interval.ms", "write `max_poll_interval`"),
    (
        "queued.max.messages.kbytes",
        "bounds the sink's memory with `batch.max_bytes` (docs/sink-clickhouse.md)",
    ),
];

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

/// `a,b;c,d` as shards `[a, b]` and `[c, d]`; empty as none.
pub fn parse_shards(text: &str) -> Result<Vec<Vec<String>>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut shards = Vec::new();
    for (i, shard) in text.split(';').enumerate() {
        let replicas: Vec<String> = shard
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect();
        if replicas.is_empty() {
            return Err(format!(
                "shard {} has no server (shards are separated by ';', replicas by ',')",
                i + 1
            ));
        }
        if let Some(bad) = replicas
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(format!("{bad:?} must start with http:// or https://"));
        }
        shards.push(replicas);
    }
    Ok(shards)
}

#[cfg(test)]
mod shard_tests {
    use super::parse_shards;

    #[test]
    fn shards_parse_and_mistakes_are_named() {
        assert_eq!(parse_shards("").unwrap(), Vec::<Vec<String>>::new());
        assert_eq!(
            parse_shards("http://a:8123, http://b:8123;http://c:8123").unwrap(),
            vec![
                vec!["http://a:8123".to_owned(), "http://b:8123".to_owned()],
                vec!["http://c:8123".to_owned()]
            ]
        );
        assert!(parse_shards("http://a:8123;;http://c").unwrap_err().contains("shard 2"));
        assert!(parse_shards("a:8123").unwrap_err().contains("http://"));
    }
}
