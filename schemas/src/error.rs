//! Errors of the contract layer.

use thiserror::Error;

/// Everything that can go wrong while reading the contract or converting records.
///
/// None of these is retryable: the same bytes or the same value fail the same
/// way again, so callers dead-letter the record instead of retrying it.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// An `.avsc` file of the contract does not parse or lacks an expected part.
    #[error("the Avro contract is broken: {0}")]
    Contract(String),
    /// Bytes do not start with the Confluent magic byte and a schema id.
    #[error("not a Confluent wire-format record: {0}")]
    Wire(String),
    /// Avro encoding or decoding failed.
    #[error("Avro {stage} of {record} failed: {source}")]
    Avro {
        stage: &'static str,
        record: &'static str,
        #[source]
        source: Box<apache_avro::Error>,
    },
    /// A decoded Avro value does not have the shape of the Rust type.
    #[error("{record}: field `{field}`: {problem}")]
    Shape {
        record: &'static str,
        field: String,
        problem: String,
    },
    /// A signal name is not in the catalogue.
    #[error("unknown signal `{0}`")]
    UnknownSignal(String),
    /// A signal value does not have the type the catalogue declares.
    #[error("signal `{name}` must be a {expected}, got {got}")]
    SignalType {
        name: String,
        expected: &'static str,
        got: &'static str,
    },
}

impl SchemaError {
    pub(crate) fn shape(record: &'static str, field: impl Into<String>, problem: impl Into<String>) -> Self {
        SchemaError::Shape {
            record,
            field: field.into(),
            problem: problem.into(),
        }
    }
}
