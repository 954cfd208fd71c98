//! The one Kafka client section every service reads (`[kafka]`), and the one
//! place a librdkafka client configuration is built from it.
//!
//! A service starts from [`KafkaSettings::client`] (bootstrap, security, the
//! operator's `[kafka.properties]`), sets what it owns for correctness on
//! top (a later `set` wins) and its tunable defaults below the operator's
//! ([`Defaults::set_default`]). An owned setting ([`OWNED`]) written
//! in `[kafka.properties]` is refused when the configuration is checked, with
//! the reason, so an operator can never weaken `acks=all` or
//! `read_committed` by accident. [`verify`] turns a wrong password or a CA
//! that does not sign the broker into one clear error at start instead of
//! librdkafka's endless reconnect loop.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::config::{Renamed, Secret};

/// How clients reach the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// The SASL mechanisms that need no Kerberos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A value of `[kafka.properties]`: written as text, number or boolean, given
/// to librdkafka as text.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PropertyValue", into = "String")]
pub struct Property(pub String);

#[derive(Deserialize)]
#[serde(untagged)]
enum PropertyValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl From<PropertyValue> for Property {
    fn from(v: PropertyValue) -> Self {
        Property(match v {
            PropertyValue::Text(s) => s,
            PropertyValue::Integer(i) => i.to_string(),
            PropertyValue::Float(f) => f.to_string(),
            PropertyValue::Bool(b) => b.to_string(),
        })
    }
}

impl From<Property> for String {
    fn from(p: Property) -> String {
        p.0
    }
}

impl fmt::Debug for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The `[kafka]` table of every service.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Bootstrap brokers, `host:port[,host:port…]`.
    pub bootstrap: String,
    pub security_protocol: SecurityProtocol,
    /// Required with `sasl_plaintext` and `sasl_ssl`.
    pub sasl_mechanism: Option<SaslMechanism>,
    pub sasl_username: Option<String>,
    pub sasl_password: Secret,
    /// PEM file of the CA(s) that sign the brokers' certificates (`ssl`,
    /// `sasl_ssl`); the system's CAs when absent.
    pub ssl_ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub ssl_cert_file: Option<PathBuf>,
    pub ssl_key_file: Option<PathBuf>,
    pub ssl_key_password: Secret,
    /// Any other librdkafka setting, such as `"socket.keepalive.enable" = true`.
    pub properties: BTreeMap<String, Property>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap: "127.0.0.1:9092".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: Secret::default(),
            ssl_ca_file: None,
            ssl_cert_file: None,
            ssl_key_file: None,
            ssl_key_password: Secret::default(),
            properties: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("KafkaSettings");
        d.field("bootstrap", &self.bootstrap)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("ssl_ca_file", &self.ssl_ca_file)
            .field("ssl_cert_file", &self.ssl_cert_file)
            .field("ssl_key_file", &self.ssl_key_file)
            .field("ssl_key_password", &self.ssl_key_password);
        // A property whose name says it is secret is hidden like the others.
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let secret = ["password", "secret", "token", "jaas", "pem"]
                    .iter()
                    .any(|s| k.contains(s));
                (k.as_str(), if secret { "***" } else { v.0.as_str() })
            })
            .collect();
        d.field("properties", &shown).finish()
    }
}

/// `kafka_bootstrap`, the key before `[kafka]`, still read (deprecated).
pub const KAFKA_BOOTSTRAP_RENAMED: Renamed = Renamed {
    old: "kafka_bootstrap",
    new: "kafka.bootstrap",
    convert: std::convert::identity,
};

/// Settings a service sets itself: each with why it may not be overridden.
/// The service's own values are laid on top of `[kafka.properties]`; these
/// are refused there so that nobody believes they changed one.
pub const OWNED: &[(&str, &str)] = &[
    (
        "acks",
        "every producer waits for all in-sync replicas (acks=all) before an event counts as stored",
    ),
    ("enable.idempotence", "retries must not duplicate or reorder records"),
    (
        "isolation.level",
        "consumers read only committed transactions (read_committed)",
    ),
    (
        "transactional.id",
        "set per service from `transactional_id`, stable across restarts",
    ),
    (
        "transaction.timeout.ms",
        "derived from the service's `timeout` (at least a minute)",
    ),
    (
        "enable.auto.commit",
        "offsets are committed only after the next stage confirmed the data",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only after the next stage confirmed the data",
    ),
    ("group.id", "set from the service's group settings"),
    (
        "auto.offset.reset",
        "a new group starts at the earliest record, so nothing retained is skipped",
    ),
    ("enable.partition.eof", "the service's loops depend on its value"),
    (
        "max.in.flight.requests.per.connection",
        "bounded by idempotence; ordering depends on it",
    ),
    ("message.timeout.ms", "derived from the service's produce timeout"),
    (
        "partitioner",
        "records are keyed by install; per-install order depends on one partitioner",
    ),
    ("bootstrap.servers", "write `kafka.bootstrap`"),
    ("metadata.broker.list", "write `kafka.bootstrap`"),
    ("security.protocol", "write `kafka.security_protocol`"),
    ("sasl.mechanism", "write `kafka.sasl_mechanism`"),
    ("sasl.mechanisms", "write `kafka.sasl_mechanism`"),
    ("sasl.username", "write `kafka.sasl_username`"),
    ("sasl.password", "write `kafka.sasl_password`"),
    ("ssl.ca.location", "write `kafka.ssl_ca_file`"),
    ("ssl.certificate.location", "write `kafka.ssl_cert_file`"),
    ("ssl.key.location", "write `kafka.ssl_key_file`"),
    ("ssl.key.password", "write `kafka.ssl_key_password`"),
];

/// librdkafka's other names for settings: an alias of an owned setting is
/// refused like the setting, and a service's default gives way to either.
pub const ALIASES: &[(&str, &str)] = &[
    ("request.required.acks", "acks"),
    ("delivery.timeout.ms", "message.timeout.ms"),
    ("max.in.flight", "max.in.flight.requests.per.connection"),
    ("queue.buffering.max.ms", "linger.ms"),
    ("compression.codec", "compression.type"),
    ("metadata.broker.list", "bootstrap.servers"),
    ("sasl.mechanisms", "sasl.mechanism"),
];

/// The canonical name of a librdkafka setting.
fn canonical(name: &str) -> &str {
    ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, c)| c)
}

/// A librdkafka configuration error without the value (it may be secret).
fn without_value(e: &KafkaError) -> String {
    match e {
        KafkaError::ClientConfig(_, description, key, _) => format!("{key}: {description}"),
        other => other.to_string(),
    }
}

impl KafkaSettings {
    /// Settings with `bootstrap` and everything else at its default (tests,
    /// tools).
    pub fn plain(bootstrap: impl Into<String>) -> Self {
        KafkaSettings {
            bootstrap: bootstrap.into(),
            ..KafkaSettings::default()
        }
    }

    /// The tools' settings from `KAFKA_BOOTSTRAP`, `KAFKA_SECURITY_PROTOCOL`,
    /// `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME`, `KAFKA_SASL_PASSWORD`,
    /// `KAFKA_SSL_CA_FILE`, `KAFKA_SSL_CERT_FILE`, `KAFKA_SSL_KEY_FILE`,
    /// `KAFKA_SSL_KEY_PASSWORD` (the variables `.stack/secure/env` sets for
    /// the tools); plaintext to 127.0.0.1:9092 when none is set.
    pub fn from_tool_env() -> Result<Self, String> {
        let var = |name: &str| std::env::var(format!("KAFKA_{name}")).ok().filter(|v| !v.is_empty());
        let mut s = KafkaSettings::default();
        if let Some(b) = var("BOOTSTRAP") {
            s.bootstrap = b;
        }
        if let Some(p) = var("SECURITY_PROTOCOL") {
            s.security_protocol =
                serde_json::from_value(serde_json::Value::String(p.to_lowercase())).map_err(|_| {
                    format!("KAFKA_SECURITY_PROTOCOL={p}: expected plaintext, ssl, sasl_plaintext or sasl_ssl")
                })?;
        }
        if let Some(m) = var("SASL_MECHANISM") {
            s.sasl_mechanism = Some(
                serde_json::from_value(serde_json::Value::String(m.to_uppercase()))
                    .map_err(|_| format!("KAFKA_SASL_MECHANISM={m}: expected PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"))?,
            );
        }
        s.sasl_username = var("SASL_USERNAME");
        s.sasl_password = Secret(var("SASL_PASSWORD").unwrap_or_default());
        s.ssl_ca_file = var("SSL_CA_FILE").map(PathBuf::from);
        s.ssl_cert_file = var("SSL_CERT_FILE").map(PathBuf::from);
        s.ssl_key_file = var("SSL_KEY_FILE").map(PathBuf::from);
        s.ssl_key_password = Secret(var("SSL_KEY_PASSWORD").unwrap_or_default());
        let problems = s.check("kafka");
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(problems.join("; "))
        }
    }

    /// A client configuration: the operator's properties, then bootstrap and
    /// security. The caller adds what it owns on top.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        for (k, v) in &self.properties {
            c.set(k, &v.0);
        }
        c.set("bootstrap.servers", &self.bootstrap)
            .set("security.protocol", self.security_protocol.librdkafka());
        if let Some(m) = self.sasl_mechanism {
            c.set("sasl.mechanism", m.librdkafka());
        }
        if let Some(u) = &self.sasl_username {
            c.set("sasl.username", u);
        }
        if !self.sasl_password.expose().is_empty() {
            c.set("sasl.password", self.sasl_password.expose());
        }
        let path = |p: &Path| p.to_string_lossy().into_owned();
        if let Some(p) = &self.ssl_ca_file {
            c.set("ssl.ca.location", path(p));
        }
        if let Some(p) = &self.ssl_cert_file {
            c.set("ssl.certificate.location", path(p));
        }
        if let Some(p) = &self.ssl_key_file {
            c.set("ssl.key.location", path(p));
        }
        if !self.ssl_key_password.expose().is_empty() {
            c.set("ssl.key.password", self.ssl_key_password.expose());
        }
        c
    }

    /// Every problem of the section, each naming its key under `section`
    /// (`kafka`): refused properties, a SASL protocol without mechanism or
    /// credentials, files that cannot be read, names librdkafka does not know.
    pub fn check(&self, section: &str) -> Vec<String> {
        self.check_owning(section, &[])
    }

    /// [`KafkaSettings::check`] for a service that also sets `owned` itself
    /// (from keys of its own: the gateway's `queue_max_messages`).
    pub fn check_owning(&self, section: &str, owned: &[(&str, &str)]) -> Vec<String> {
        let mut problems = Vec::new();
        if self.bootstrap.trim().is_empty() {
            problems.push(format!(
                "{section}.bootstrap is empty (write host:port of one or more brokers)"
            ));
        }
        for key in self.properties.keys() {
            let name = canonical(key);
            if let Some((_, why)) = OWNED.iter().chain(owned).find(|(k, _)| *k == name) {
                problems.push(format!(
                    "{section}.properties.{key} is refused: the service sets it itself ({why})"
                ));
            }
        }
        let p = self.security_protocol;
        if p.sasl() {
            if self.sasl_mechanism.is_none() {
                problems.push(format!(
                    "{section}.sasl_mechanism is required with security_protocol = \"{}\" (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                    p.librdkafka()
                ));
            }
            if self.sasl_username.as_deref().unwrap_or("").is_empty() {
                problems.push(format!(
                    "{section}.sasl_username is required with security_protocol = \"{}\"",
                    p.librdkafka()
                ));
            }
            if self.sasl_password.expose().is_empty() {
                problems.push(format!(
                    "{section}.sasl_password is required with security_protocol = \"{}\"",
                    p.librdkafka()
                ));
            }
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || !self.sasl_password.expose().is_empty()
        {
            problems.push(format!(
                "{section}.sasl_mechanism, sasl_username and sasl_password need security_protocol = \"sasl_ssl\" (or \"sasl_plaintext\"); it is \"{}\"",
                p.librdkafka()
            ));
        }
        let files = [
            ("ssl_ca_file", &self.ssl_ca_file),
            ("ssl_cert_file", &self.ssl_cert_file),
            ("ssl_key_file", &self.ssl_key_file),
        ];
        for (key, file) in files {
            let Some(file) = file else { continue };
            if !p.tls() {
                problems.push(format!(
                    "{section}.{key} needs security_protocol = \"ssl\" or \"sasl_ssl\"; it is \"{}\"",
                    p.librdkafka()
                ));
            }
            if let Err(e) = std::fs::File::open(file) {
                problems.push(format!("{section}.{key}: cannot read {}: {e}", file.display()));
            }
        }
        if self.ssl_cert_file.is_some() != self.ssl_key_file.is_some() {
            problems.push(format!(
                "{section}.ssl_cert_file and {section}.ssl_key_file go together (mutual TLS needs both)"
            ));
        }
        // librdkafka checks every name and value as it is set.
        if problems.is_empty() {
            if let Err(e) = self.client().create_native_config() {
                problems.push(format!(
                    "{section}: librdkafka refuses the settings: {}",
                    without_value(&e)
                ));
            }
        }
        problems
    }
}

/// A service's default that `[kafka.properties]` may change (`linger.ms`,
/// `compression.type`), unlike what it owns (set with `set`).
pub trait Defaults {
    /// Sets `key` unless the operator's properties already did.
    fn set_default(&mut self, key: &str, value: impl Into<String>) -> &mut Self;
}

impl Defaults for ClientConfig {
    fn set_default(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        let taken = self.get(key).is_some() || ALIASES.iter().any(|(alias, c)| *c == key && self.get(alias).is_some());
        if !taken {
            self.set(key, value);
        }
        self
    }
}

/// Why the brokers could not be used, naming the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("the broker refused the credentials (kafka.sasl_username / kafka.sasl_password, mechanism {mechanism}): {detail}")]
    Authentication { mechanism: String, detail: String },
    #[error("TLS with the broker failed (check kafka.ssl_ca_file signs the broker's certificate, kafka.ssl_cert_file / ssl_key_file for mutual TLS, and that the broker speaks {protocol} on kafka.bootstrap): {detail}")]
    Tls { protocol: String, detail: String },
    #[error("no broker of kafka.bootstrap ({bootstrap}) answered within {waited:?} ({protocol}): {detail}")]
    Unreachable {
        bootstrap: String,
        protocol: String,
        waited: Duration,
        detail: String,
    },
    #[error("the broker closed every connection before it answered: kafka.security_protocol ({protocol}) is likely not what the listener at kafka.bootstrap ({bootstrap}) speaks: {detail}")]
    Protocol {
        bootstrap: String,
        protocol: String,
        detail: String,
    },
    #[error("the Kafka settings are invalid: {0}")]
    Config(String),
}

impl AccessError {
    /// Whether waiting could help: an unreachable broker may come; a
    /// refused password or certificate will not.
    pub fn retryable(&self) -> bool {
        matches!(self, AccessError::Unreachable { .. })
    }
}

/// Records the last error librdkafka reports.
#[derive(Default)]
struct Watch {
    last: Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(code) = error.rdkafka_error_code() {
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((code, reason.to_owned()));
        }
    }

    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _log_message: &str) {}
}

impl ConsumerContext for Watch {}

/// Connects once and asks for metadata, within `timeout`: `Ok` when a broker
/// answered; a refused password or certificate at once as the error naming
/// the setting; [`AccessError::Unreachable`] when no broker answered.
/// Blocking: call it from a blocking task.
pub fn verify(settings: &KafkaSettings, timeout: Duration) -> Result<(), AccessError> {
    let protocol = settings.security_protocol.librdkafka().to_owned();
    let consumer: BaseConsumer<Watch> = settings
        .client()
        .set("log_level", "0")
        // One try per broker address, then the error callback.
        .set("reconnect.backoff.ms", "200")
        .create_with_context(Watch::default())
        .map_err(|e| AccessError::Config(without_value(&e)))?;
    let started = Instant::now();
    loop {
        let step = Duration::from_millis(500).min(timeout.saturating_sub(started.elapsed()));
        let mut detail = match consumer.fetch_metadata(None, step.max(Duration::from_millis(50))) {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        // Errors reach the context when the queue is served.
        let _ = consumer.poll(Duration::ZERO);
        let last = consumer.context().last.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((code, reason)) = last {
            // Fatal only by the error's code, and never when librdkafka
            // says the connection itself went away (a broker restarting, a
            // proxy in front of one that is not up yet): those come under
            // the SSL and authentication codes too, and heal by waiting.
            let transport = lost_connection(&reason);
            match code {
                RDKafkaErrorCode::Authentication if !transport => {
                    return Err(AccessError::Authentication {
                        mechanism: settings
                            .sasl_mechanism
                            .map(|m| m.librdkafka())
                            .unwrap_or("none")
                            .to_owned(),
                        detail: reason,
                    })
                }
                RDKafkaErrorCode::SSL if !transport => {
                    return Err(AccessError::Tls {
                        protocol,
                        detail: reason,
                    })
                }
                _ => detail = reason,
            }
        }
        if started.elapsed() >= timeout {
            return Err(AccessError::Unreachable {
                bootstrap: settings.bootstrap.clone(),
                protocol,
                waited: timeout,
                detail,
            });
        }
    }
}

/// The reason names a connection that was lost or never made, not a
/// refusal of the credentials or the certificate.
fn lost_connection(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    [
        "disconnected",
        "connection closed",
        "transport failure",
        "transport error",
        "timed out",
        "connection refused",
        "connection reset",
    ]
    .iter()
    .any(|w| r.contains(w))
}

/// [`verify`] at a service's start: waits up to `patience` for a broker,
/// logging each wait, and gives up at once on refused credentials or
/// certificates. An unreachable broker after `patience` is only a warning:
/// the service starts and its clients keep reconnecting (a broker outage at
/// start is an outage, not a configuration error).
pub async fn verify_at_start(settings: &KafkaSettings, patience: Duration) -> Result<(), AccessError> {
    let s = settings.clone();
    let started = Instant::now();
    loop {
        let s2 = s.clone();
        let result = tokio::task::spawn_blocking(move || verify(&s2, Duration::from_secs(5)))
            .await
            .unwrap_or_else(|e| Err(AccessError::Config(e.to_string())));
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.retryable() && started.elapsed() < patience => {
                tracing::warn!(error = %e, "waiting for the Kafka brokers");
            }
            Err(AccessError::Unreachable {
                bootstrap,
                protocol,
                detail,
                ..
            }) if detail.contains("security.protocol") => {
                // librdkafka's own hint: a plaintext client at a TLS
                // listener (or the reverse) is closed at once, every time.
                return Err(AccessError::Protocol {
                    bootstrap,
                    protocol,
                    detail,
                });
            }
            Err(e) if e.retryable() => {
                tracing::warn!(error = %e, "starting without a broker; the clients keep trying");
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_properties_are_refused_with_the_reason() {
        let mut s = KafkaSettings::default();
        s.properties.insert("acks".into(), Property("1".into()));
        s.properties.insert("linger.ms".into(), Property("20".into()));
        s.properties.insert("sasl.password".into(), Property("x".into()));
        s.properties
            .insert("request.required.acks".into(), Property("1".into()));
        let problems = s.check("kafka");
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("kafka.properties.acks is refused") && problems[0].contains("acks=all"));
        assert!(problems[1].contains("request.required.acks is refused"), "{problems:?}");
        assert!(problems[2].contains("write `kafka.sasl_password`"));
        // A default gives way to the operator's alias.
        let mut c = ClientConfig::new();
        c.set("queue.buffering.max.ms", "50").set_default("linger.ms", "5");
        assert_eq!(c.get("linger.ms"), None);
    }

    #[test]
    fn unknown_librdkafka_names_are_refused() {
        let mut s = KafkaSettings::default();
        s.properties.insert("linger.msec".into(), Property("20".into()));
        s.properties
            .insert("ssl.keystore.pasword".into(), Property("s3cret-value".into()));
        let problems = s.check("kafka");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("linger.msec") || problems[0].contains("pasword"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("s3cret-value"), "{problems:?}");
    }

    #[test]
    fn sasl_needs_mechanism_and_credentials() {
        let s = KafkaSettings {
            security_protocol: SecurityProtocol::SaslSsl,
            ..KafkaSettings::default()
        };
        let problems = s.check("kafka");
        assert_eq!(problems.len(), 3, "{problems:?}");
        let s = KafkaSettings {
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some(SaslMechanism::ScramSha512),
            sasl_username: Some("u".into()),
            sasl_password: Secret("p".into()),
            ssl_ca_file: Some("/nonexistent/ca.pem".into()),
            ..KafkaSettings::default()
        };
        let problems = s.check("kafka");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("cannot read /nonexistent/ca.pem"));
    }

    #[test]
    fn secrets_are_hidden() {
        let mut s = KafkaSettings {
            sasl_password: Secret("hunter2".into()),
            ..KafkaSettings::default()
        };
        s.properties
            .insert("sasl.oauthbearer.client.secret".into(), Property("s3cret".into()));
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn a_lost_connection_is_never_a_refusal() {
        assert!(lost_connection(
            "SSL handshake failed: Disconnected: connection closed by peer"
        ));
        assert!(lost_connection(
            "SASL SCRAM-SHA-512 mechanism handshake failed: Local: Broker transport failure"
        ));
        assert!(!lost_connection(
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"
        ));
        assert!(!lost_connection(
            "SASL authentication error: Authentication failed during authentication due to invalid credentials"
        ));
    }

    #[test]
    fn an_unreachable_broker_is_retryable() {
        let s = KafkaSettings::plain("127.0.0.1:1");
        let e = verify(&s, Duration::from_secs(1)).unwrap_err();
        assert!(e.retryable(), "{e}");
    }
}
