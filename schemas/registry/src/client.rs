//! The client the services use: register or look up their schemas at start,
//! fetch writer schemas by id (cached forever: an id never changes meaning),
//! and decode Confluent-framed records into the current Rust types.
//!
//! It speaks the plain Confluent REST API, so it works against this registry,
//! Confluent's or Redpanda's.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use context_schemas::apache_avro::Schema;
use context_schemas::{wire, AvroRecord};
use serde::Deserialize;
use serde_json::json;

use crate::api::CONTENT_TYPE;
use crate::error::RegistryError;

#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    by_id: Arc<RwLock<HashMap<u32, Arc<Schema>>>>,
    /// Whether the schema of an id is the current schema of a type.
    current: Arc<RwLock<HashMap<(u32, std::any::TypeId), bool>>>,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: u32,
    message: String,
}

impl RegistryClient {
    /// A client for the registry at `base_url`, such as `http://127.0.0.1:8081`.
    pub fn new(base_url: &str) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| RegistryError::Http {
                url: base_url.to_owned(),
                message: e.to_string(),
            })?;
        Ok(RegistryClient {
            base: base_url.trim_end_matches('/').to_owned(),
            http,
            by_id: Arc::default(),
            current: Arc::default(),
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).header("Accept", CONTENT_TYPE);
        if let Some(body) = body {
            req = req.header("Content-Type", CONTENT_TYPE).body(body.to_string());
        }
        let http_err = |e: reqwest::Error| RegistryError::Http {
            url: url.clone(),
            message: e.to_string(),
        };
        let resp = req.send().await.map_err(http_err)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(http_err)?;
        if !(200..300).contains(&status) {
            let (code, message) = serde_json::from_slice::<ErrorAnswer>(&bytes)
                .map(|e| (e.error_code, e.message))
                .unwrap_or_else(|_| (u32::from(status), String::from_utf8_lossy(&bytes).into_owned()));
            return Err(RegistryError::Remote { status, code, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Http {
            url,
            message: format!("unexpected answer: {e}"),
        })
    }

    /// Registers `avsc` under `subject` (the existing id when already there).
    pub async fn register(&self, subject: &str, avsc: &str) -> Result<u32, RegistryError> {
        let answer: IdAnswer = self
            .call(
                reqwest::Method::POST,
                &format!("/subjects/{subject}/versions"),
                Some(json!({"schema": avsc})),
            )
            .await?;
        Ok(answer.id)
    }

    /// Sets the compatibility level of one subject, such as `FULL_TRANSITIVE`.
    pub async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), RegistryError> {
        let _: serde_json::Value = self
            .call(
                reqwest::Method::PUT,
                &format!("/config/{subject}"),
                Some(json!({"compatibility": level})),
            )
            .await?;
        Ok(())
    }

    /// The id of `avsc` under `subject`, if registered there.
    pub async fn lookup(&self, subject: &str, avsc: &str) -> Result<Option<u32>, RegistryError> {
        match self
            .call::<IdAnswer>(
                reqwest::Method::POST,
                &format!("/subjects/{subject}"),
                Some(json!({"schema": avsc})),
            )
            .await
        {
            Ok(a) => Ok(Some(a.id)),
            Err(RegistryError::Remote {
                code: 40401 | 40403, ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The schema registered under `id`, from the cache after the first call.
    pub async fn schema_by_id(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(s) = self.by_id.read().expect("cache lock").get(&id) {
            return Ok(s.clone());
        }
        let answer: SchemaAnswer = self
            .call(reqwest::Method::GET, &format!("/schemas/ids/{id}"), None)
            .await?;
        let schema = Arc::new(Schema::parse_str(&answer.schema).map_err(|e| RegistryError::Remote {
            status: 200,
            code: 42201,
            message: format!("schema {id} from the registry does not parse: {e}"),
        })?);
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
                let writer = self.schema_by_id(id).await.map_err(DecodeError::Registry)?;
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
            Some(self.schema_by_id(id).await.map_err(DecodeError::Registry)?)
        };
        let writer = writer.as_deref().unwrap_or(T::schema());
        let record = T::decode_resolving(body, writer).map_err(DecodeError::Record)?;
        Ok((id, record))
    }
}

/// Why a record could not be decoded: the registry (retry later) or the
/// record itself (dead-letter it).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Registry(RegistryError),
    #[error(transparent)]
    Record(context_schemas::SchemaError),
}

impl DecodeError {
    /// Why a record could not be decoded, as a dead-letter reason:
    /// `unknown_schema_id`, `not_confluent_wire_format` or `undecodable`.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Registry(_) => "unknown_schema_id",
            DecodeError::Record(context_schemas::SchemaError::Wire(_)) => "not_confluent_wire_format",
            DecodeError::Record(_) => "undecodable",
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            DecodeError::Registry(e) => e.is_retryable(),
            DecodeError::Record(_) => false,
        }
    }
}
