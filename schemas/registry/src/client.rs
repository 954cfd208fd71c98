//! The client the services use: register or look up their schemas at start,
//! fetch writer schemas by id (cached forever: an id never changes meaning),
//! and decode Confluent-framed records into the current Rust types.
//!
//! The registry calls go through `schema_registry_converter` (the
//! Confluent REST API, so this registry, Confluent's or Redpanda's); on top
//! of it this client keeps the parsed schema of each id and decodes with the
//! contract's own typed decoder (`AvroRecord::decode_resolving`: the fast
//! reader for the current schema, Avro resolution for older ones). The
//! converter's own `AvroDecoder` builds a generic value tree per record:
//! 28.7k `ContextEvent`s/s against 322k/s for the typed reader, 11.2x
//! slower on the sink's and router's hot path (`examples/decoder_speed.rs`,
//! release, one core); the interoperability of its encoder and
//! decoder with our records and topics is proven by
//! `tests/converter_interop.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use context_schemas::apache_avro::Schema;
use context_schemas::{wire, AvroRecord};
use schema_registry_converter::async_impl::schema_registry::{
    get_schema_by_id, perform_sr_call, post_schema, SrSettings,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SchemaType, SrCall, SuppliedSchema};

use context_runtime::registry::RegistrySettings;

use crate::error::RegistryError;

#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    settings: SrSettings,
    /// For the calls the converter has none for, with the same credentials
    /// and CA.
    http: reqwest::Client,
    auth: Option<(String, String)>,
    by_id: Arc<RwLock<HashMap<u32, Arc<Schema>>>>,
    /// Whether the schema of an id is the current schema of a type.
    current: Arc<RwLock<HashMap<(u32, std::any::TypeId), bool>>>,
    /// How long an id the registry does not know is retried.
    unknown_id_patience: Duration,
    /// When each unknown id was first answered "not found" (bounded: ids
    /// found again or given up are forgotten, and at most
    /// [`MAX_UNKNOWN_IDS`] are remembered).
    unknown_since: Arc<Mutex<HashMap<u32, Instant>>>,
}

/// Most unknown ids a client remembers the first sighting of; beyond it the
/// oldest sighting is forgotten (and that id's patience starts again).
pub const MAX_UNKNOWN_IDS: usize = 1024;

/// The converter's error as ours: the Confluent error code of the answer
/// (its first three digits are the HTTP status, by Confluent's convention),
/// or a transport failure, which is worth retrying.
fn from_converter(base: &str, e: SRCError) -> RegistryError {
    let answer = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<RawError>());
    match answer {
        Some(raw) => RegistryError::Remote {
            status: status_of(raw.error_code, &e),
            code: raw.error_code,
            message: raw.message.clone(),
        },
        None => RegistryError::Http {
            url: base.to_owned(),
            message: match &e.cause {
                Some(cause) => format!("{}: {cause}", e.error),
                None => e.error.clone(),
            },
        },
    }
}

/// The HTTP status behind a Confluent error code: the code itself when it is
/// one (`409`), its first three digits for the long form (`40401`), else the
/// status the converter wrote into its message.
fn status_of(code: u32, e: &SRCError) -> u16 {
    let from_code = match code {
        100..=599 => Some(code),
        10_000..=59_999 => Some(code / 100),
        _ => None,
    };
    from_code
        .and_then(|c| u16::try_from(c).ok())
        .or_else(|| {
            let (_, after) = e.error.split_once("status ")?;
            after.get(..3)?.parse().ok()
        })
        .unwrap_or(if e.retriable { 503 } else { 500 })
}

fn avro(avsc: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, avsc.to_owned())
}

impl RegistryClient {
    /// A client for the registry at `base_url`, such as `http://127.0.0.1:8081`,
    /// without credentials.
    pub fn new(base_url: &str) -> Result<Self, RegistryError> {
        Self::connect(&RegistrySettings::open(base_url))
    }

    /// A client with the service's registry settings: basic authentication
    /// when `registry_username` is set, and `registry_ca_file` trusted for
    /// an `https://` registry.
    pub fn connect(s: &RegistrySettings) -> Result<Self, RegistryError> {
        let base = s.registry_url.trim_end_matches('/').to_owned();
        let http_builder = || -> Result<reqwest::ClientBuilder, RegistryError> {
            let mut b = reqwest::Client::builder().timeout(Duration::from_secs(15));
            if let Some(ca) = &s.registry_ca_file {
                let bad = |message: String| RegistryError::Http {
                    url: base.clone(),
                    message,
                };
                let pem = std::fs::read(ca)
                    .map_err(|e| bad(format!("registry_ca_file: cannot read {}: {e}", ca.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| bad(format!("registry_ca_file {}: not PEM certificates: {e}", ca.display())))?;
                for cert in certs {
                    b = b.add_root_certificate(cert);
                }
            }
            Ok(b)
        };
        let auth = s
            .registry_username
            .as_ref()
            .map(|u| (u.clone(), s.registry_password.expose().to_owned()));
        let mut sr = SrSettings::new_builder(base.clone());
        sr.set_timeout(Duration::from_secs(15));
        if let Some((user, password)) = &auth {
            sr.set_basic_authorization(user, Some(password));
        }
        let settings = sr.build_with(http_builder()?).map_err(|e| from_converter(&base, e))?;
        let http = http_builder()?.build().map_err(|e| RegistryError::Http {
            url: base.clone(),
            message: e.to_string(),
        })?;
        Ok(RegistryClient {
            base,
            settings,
            http,
            auth,
            by_id: Arc::default(),
            current: Arc::default(),
            unknown_id_patience: s.registry_unknown_id_patience,
            unknown_since: Arc::default(),
        })
    }

    /// How long an unknown id is retried before [`DecodeError::is_retryable`]
    /// turns false (`registry_unknown_id_patience`).
    pub fn with_unknown_id_patience(mut self, patience: Duration) -> Self {
        self.unknown_id_patience = patience;
        self
    }

    /// The writer schema of `id` for decoding: an id the registry does not
    /// know is retried for `unknown_id_patience` from its first sighting.
    async fn writer_schema(&self, id: u32) -> Result<Arc<Schema>, DecodeError> {
        match self.schema_by_id(id).await {
            Ok(s) => {
                if !self.unknown_since.lock().expect("unknown ids lock").is_empty() {
                    self.unknown_since.lock().expect("unknown ids lock").remove(&id);
                }
                Ok(s)
            }
            Err(e) if e.is_unknown_schema() => {
                let mut seen = self.unknown_since.lock().expect("unknown ids lock");
                if seen.len() >= MAX_UNKNOWN_IDS && !seen.contains_key(&id) {
                    if let Some(oldest) = seen.iter().min_by_key(|(_, at)| **at).map(|(id, _)| *id) {
                        seen.remove(&oldest);
                    }
                }
                let waited = seen.entry(id).or_insert_with(Instant::now).elapsed();
                let give_up = waited >= self.unknown_id_patience;
                if give_up {
                    seen.remove(&id);
                }
                Err(DecodeError::UnknownId {
                    id,
                    waited,
                    give_up,
                    source: e,
                })
            }
            Err(e) => Err(DecodeError::Registry(e)),
        }
    }

    /// Registers `avsc` under `subject` (the existing id when already there).
    pub async fn register(&self, subject: &str, avsc: &str) -> Result<u32, RegistryError> {
        post_schema(&self.settings, subject.to_owned(), avro(avsc))
            .await
            .map(|registered| registered.id)
            .map_err(|e| from_converter(&self.base, e))
    }

    /// Sets the compatibility level of one subject, such as `FULL_TRANSITIVE`
    /// (the converter has no call for it: one plain request).
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let url = format!("{}/config/{subject}", self.base);
        let http_err = |e: reqwest::Error| RegistryError::Http {
            url: url.clone(),
            message: e.to_string(),
        };
        let mut request = self.http.put(&url);
        if let Some((user, password)) = &self.auth {
            request = request.basic_auth(user, Some(password));
        }
        let resp = request
            .header("Content-Type", crate::api::CONTENT_TYPE)
            .body(serde_json::json!({ "compatibility": level }).to_string())
            .send()
            .await
            .map_err(http_err)?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        let code = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error_code"].as_u64())
            .map_or(u32::from(status), |c| c as u32);
        Err(RegistryError::Remote {
            status,
            code,
            message: text,
        })
    }

    /// The id of `avsc` under `subject`, if registered there.
    pub async fn lookup(&self, subject: &str, avsc: &str) -> Result<Option<u32>, RegistryError> {
        let body = serde_json::json!({ "schema": avsc }).to_string();
        match perform_sr_call(&self.settings, SrCall::PostForVersion(subject, &body)).await {
            Ok(raw) => raw.id.map(Some).ok_or_else(|| RegistryError::Http {
                url: self.base.clone(),
                message: "the registry's answer to a lookup has no id".into(),
            }),
            Err(e) => match from_converter(&self.base, e) {
                RegistryError::Remote {
                    code: 40401 | 40403, ..
                } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// The schema registered under `id`, from the cache after the first call.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.by_id.read().expect("cache lock").get(&id) {
            return Ok(s.clone());
        }
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| from_converter(&self.base, e))?;
        let schema = Arc::new(
            Schema::parse_str(&registered.schema).map_err(|e| RegistryError::Remote {
                status: 200,
                code: 42201,
                message: format!("schema {id} from the registry does not parse: {e}"),
            })?,
        );
        self.by_id.write().expect("cache lock").insert(id, schema.clone());
        Ok(schema)
    }

    /// Decodes a Confluent-framed record, resolving an older writer schema
    /// into the current type `T`. Returns the writer's schema id too.
    pub async fn decode<T: AvroRecord + 'static>(&self, bytes: &[u8]) -> Result<(u32, T), DecodeError> {
        let (id, body) = wire::unframe(bytes).map_err(DecodeError::Record)?;
        let key = (id, std::any::TypeId::of::<T>());
        let current = self.current.read().expect("cache lock").get(&key).copied();
        let current = match current {
            Some(c) => c,
            None => {
                let writer = self.writer_schema(id).await?;
                let c = T::is_current(&writer);
                self.current.write().expect("cache lock").insert(key, c);
                c
            }
        };
        // A current writer is passed as the current schema itself, which the
        // trait recognises by pointer and reads on its fast path.
        let writer = if current {
            None
        } else {
            Some(self.writer_schema(id).await?)
        };
        let writer = writer.as_deref().unwrap_or(T::schema());
        let record = T::decode_resolving(body, writer).map_err(DecodeError::Record)?;
        Ok((id, record))
    }
}

/// Why a record could not be decoded: the registry (retry later), an id the
/// registry does not know (retry for a while, then give the record up), or
/// the record itself (dead-letter it).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The registry is away, refuses the credentials or answers something
    /// else than the schema: nothing is wrong with the record, so it is
    /// retried for as long as it takes (an operator fixes the registry).
    #[error(transparent)]
    Registry(RegistryError),
    /// The registry answered that it does not know the record's schema id.
    /// Retried until `registry_unknown_id_patience` has passed since the id
    /// was first seen unknown (`give_up`), then given up.
    #[error("schema id {id} is unknown to the registry (for {}s so far): {source}", .waited.as_secs())]
    UnknownId {
        id: u32,
        waited: Duration,
        give_up: bool,
        source: RegistryError,
    },
    /// The record's bytes are not a record of the schema it names.
    #[error(transparent)]
    Record(context_schemas::SchemaError),
}

impl DecodeError {
    /// Why a record could not be decoded, as a dead-letter reason:
    /// `unknown_schema_id`, `not_confluent_wire_format` or `undecodable`
    /// (`registry_unavailable` is never given up on).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Registry(_) => "registry_unavailable",
            DecodeError::UnknownId { .. } => "unknown_schema_id",
            DecodeError::Record(context_schemas::SchemaError::Wire(_)) => "not_confluent_wire_format",
            DecodeError::Record(_) => "undecodable",
        }
    }

    /// Whether the same record may decode later: always for the registry
    /// being away or refusing, for an unknown id until its patience ran out,
    /// never for a broken record.
    pub fn is_retryable(&self) -> bool {
        match self {
            DecodeError::Registry(_) => true,
            DecodeError::UnknownId { give_up, .. } => !give_up,
            DecodeError::Record(_) => false,
        }
    }
}
