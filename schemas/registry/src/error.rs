//! Errors of the registry and their Confluent error codes.

use thiserror::Error;

/// Every failure of the registry, the server side and the client side.
#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    #[error("Version {1} not found for subject '{0}'.")]
    VersionNotFound(String, u32),
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    #[error("Subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error("Version {1} of subject '{0}' was soft deleted. Set permanent=true to delete permanently")]
    VersionSoftDeleted(String, u32),
    #[error("Version {1} of subject '{0}' was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted(String, u32),
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    #[error("{0}")]
    InvalidSchema(String),
    #[error("The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion(String),
    #[error("{0}")]
    InvalidCompatibility(String),
    #[error("Schema being registered is incompatible with an earlier schema for subject '{subject}': {}", .problems.join("; "))]
    Incompatible { subject: String, problems: Vec<String> },
    #[error("{0}")]
    BadRequest(String),
    #[error("Error in the backend data store: {0}")]
    Store(String),
    #[error("Error while {action}: {source}")]
    Kafka {
        action: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Operation timed out: {0}")]
    Timeout(String),
    #[error("the registry is still reading the schemas topic; retry shortly")]
    NotReady,
    /// A client-side failure talking to a registry.
    #[error("schema registry request to {url} failed: {message}")]
    Http { url: String, message: String },
    /// An error answer from a registry, as seen by the client.
    #[error("schema registry answered {status} (error code {code}): {message}")]
    Remote { status: u16, code: u32, message: String },
}

impl RegistryError {
    pub(crate) fn kafka(action: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| RegistryError::Kafka { action, source }
    }

    /// The HTTP status and Confluent error code of this error.
    pub fn status_and_code(&self) -> (u16, u32) {
        match self {
            RegistryError::SubjectNotFound(_) => (404, 40401),
            RegistryError::VersionNotFound(..) => (404, 40402),
            RegistryError::SchemaNotFound(_) => (404, 40403),
            RegistryError::SubjectSoftDeleted(_) => (404, 40404),
            RegistryError::SubjectNotSoftDeleted(_) => (404, 40405),
            RegistryError::VersionSoftDeleted(..) => (404, 40406),
            RegistryError::VersionNotSoftDeleted(..) => (404, 40407),
            RegistryError::SubjectConfigNotFound(_) => (404, 40408),
            RegistryError::InvalidSchema(_) => (422, 42201),
            RegistryError::InvalidVersion(_) => (422, 42202),
            RegistryError::InvalidCompatibility(_) => (422, 42203),
            RegistryError::Incompatible { .. } => (409, 409),
            RegistryError::BadRequest(_) => (400, 400),
            RegistryError::Store(_) | RegistryError::Kafka { .. } => (500, 50001),
            RegistryError::Timeout(_) => (500, 50002),
            RegistryError::NotReady => (503, 50003),
            RegistryError::Http { .. } => (502, 50003),
            RegistryError::Remote { status, code, .. } => (*status, *code),
        }
    }

    /// Whether the registry answered that it does not know a schema (Confluent
    /// error code 40403), as opposed to being away or refusing the request.
    pub fn is_unknown_schema(&self) -> bool {
        matches!(self, RegistryError::SchemaNotFound(_)) || self.status_and_code().1 == 40403
    }

    /// Whether the same request may succeed later (a broker or registry
    /// outage), as opposed to a request that is wrong.
    pub fn is_retryable(&self) -> bool {
        matches!(self.status_and_code().0, 500..=599)
    }
}
