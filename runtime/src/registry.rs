//! How a service reaches a schema registry: the `registry_*` keys every
//! registry client has, flattened into its configuration.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// `registry_url`, `registry_username`, `registry_password`,
/// `registry_ca_file`, `registry_unknown_id_patience` (top-level keys of the
/// service's file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistrySettings {
    /// Such as `http://127.0.0.1:8081` or `https://psrc-….confluent.cloud`.
    pub registry_url: String,
    /// HTTP basic authentication (Confluent's `basic.auth.user.info`).
    pub registry_username: Option<String>,
    pub registry_password: Secret,
    /// PEM file of the CA(s) that sign the registry's certificate; the
    /// system's CAs when absent.
    pub registry_ca_file: Option<PathBuf>,
    /// How long a record whose schema id the registry does not know is
    /// retried before it is given up as a dead letter (`unknown_schema_id`).
    /// An id that exists somewhere does not stop existing: a registry replica
    /// still reading its topic, or one restored from a backup, knows it later.
    #[serde(with = "crate::config::duration")]
    pub registry_unknown_id_patience: Duration,
}

/// The default of `registry_unknown_id_patience`.
pub const UNKNOWN_ID_PATIENCE: Duration = Duration::from_secs(600);

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings::open("http://127.0.0.1:8081")
    }
}

impl RegistrySettings {
    /// A registry without credentials (tests, tools).
    pub fn open(url: impl Into<String>) -> Self {
        RegistrySettings {
            registry_url: url.into(),
            registry_username: None,
            registry_password: Secret::default(),
            registry_ca_file: None,
            registry_unknown_id_patience: UNKNOWN_ID_PATIENCE,
        }
    }

    /// The tools' settings: `SCHEMA_REGISTRY_URL` (default
    /// `http://127.0.0.1:8081`), `REGISTRY_USERNAME`, `REGISTRY_PASSWORD`,
    /// `REGISTRY_CA_FILE`.
    pub fn from_tool_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        RegistrySettings {
            registry_url: var("SCHEMA_REGISTRY_URL").unwrap_or_else(|| "http://127.0.0.1:8081".into()),
            registry_username: var("REGISTRY_USERNAME"),
            registry_password: Secret(var("REGISTRY_PASSWORD").unwrap_or_default()),
            registry_ca_file: var("REGISTRY_CA_FILE").map(PathBuf::from),
            registry_unknown_id_patience: var("REGISTRY_UNKNOWN_ID_PATIENCE")
                .and_then(|v| humantime::parse_duration(&v).ok())
                .unwrap_or(UNKNOWN_ID_PATIENCE),
        }
    }

    /// Every problem, each naming its key.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let url = self.registry_url.trim();
        if url.is_empty() {
            problems.push("registry_url is empty".to_owned());
        } else if !(url.starts_with("http://") || url.starts_with("https://")) {
            problems.push(format!("registry_url {url:?} must start with http:// or https://"));
        }
        let has_password = !self.registry_password.expose().is_empty();
        if self.registry_username.is_some() != has_password {
            problems.push("registry_username and registry_password go together".to_owned());
        }
        if let Some(ca) = &self.registry_ca_file {
            if let Err(e) = std::fs::read(ca) {
                problems.push(format!("registry_ca_file: cannot read {}: {e}", ca.display()));
            }
        }
        problems
    }
}
