//! Lossless conversion between the Rust types and Avro binary.
//!
//! Each record type implements [`AvroRecord`]: its schema is parsed once from
//! the embedded `.avsc`, values are built field by field, and decoding can
//! resolve data written with an older (or newer) writer schema into the
//! current Rust type, following Avro's schema resolution rules.
//!
//! - this module: the trait, the generic decoder and the wire-format entry
//!   point;
//! - `records`: the four `AvroRecord` implementations;
//! - `value`, `signals`: building and reading `apache_avro` value trees;
//! - `fast_write`, `fast_read`: the hot-path `ContextEvent` (and
//!   `MotionWindow`) codec straight to and from bytes;
//! - `strict`: the input reader that turns truncation into an error.

use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::Schema;

use crate::error::SchemaError;
use crate::wire;

mod fast_read;
mod fast_write;
mod records;
mod signals;
mod strict;
mod value;

use strict::StrictReader;

/// A record type of the contract with its Avro schema.
pub trait AvroRecord: Sized {
    /// The Avro record name, used in error messages.
    const NAME: &'static str;
    /// The schema text this type is written with.
    const AVSC: &'static str;

    /// The parsed schema, shared by all calls.
    fn schema() -> &'static Schema;
    /// The Avro value of this record, shaped like [`Self::schema`].
    fn to_value(&self) -> Value;
    /// Reads a value shaped like [`Self::schema`].
    fn from_value(value: Value) -> Result<Self, SchemaError>;

    /// Avro binary body (no framing).
    fn encode(&self) -> Result<Vec<u8>, SchemaError> {
        encode_generic(self)
    }

    /// Decodes a body written with the current schema.
    fn decode(body: &[u8]) -> Result<Self, SchemaError> {
        decode_body(body, Self::schema(), None)
    }

    /// Decodes a body written with `writer`, resolving it into the current
    /// schema, always through `apache_avro`'s generic reader. Callers that
    /// want the fast path for current-schema records use
    /// [`Self::decode_resolving`].
    fn decode_from(body: &[u8], writer: &Schema) -> Result<Self, SchemaError> {
        if Self::is_current(writer) {
            decode_body(body, writer, None)
        } else {
            decode_body(body, writer, Some(Self::schema()))
        }
    }

    /// Decodes a body written with `writer`: with [`Self::decode`] (the fast
    /// path of types that have one) when `writer` is the current schema
    /// ([`Self::is_current`]), resolved into the current schema otherwise.
    ///
    /// Passing [`Self::schema`] itself makes the check a pointer comparison:
    /// callers that decode many records of one writer can check
    /// [`Self::is_current`] once and pass [`Self::schema`] from then on.
    fn decode_resolving(body: &[u8], writer: &Schema) -> Result<Self, SchemaError> {
        if Self::is_current(writer) {
            Self::decode(body)
        } else {
            decode_body(body, writer, Some(Self::schema()))
        }
    }

    /// Whether `writer` is the schema of this build (same Parsing Canonical
    /// Form), so that no resolution is needed.
    fn is_current(writer: &Schema) -> bool {
        std::ptr::eq(writer, Self::schema()) || writer == Self::schema()
    }

    /// Confluent wire format: magic byte, `schema_id`, Avro body.
    fn to_wire(&self, schema_id: u32) -> Result<Vec<u8>, SchemaError> {
        Ok(wire::frame(schema_id, &self.encode()?))
    }
}

fn decode_body<T: AvroRecord>(body: &[u8], writer: &Schema, reader: Option<&Schema>) -> Result<T, SchemaError> {
    let mut input = StrictReader { rest: body, eof: false };
    let value = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .maybe_reader_schema(reader)
        .build()
        .and_then(|r| r.read_value(&mut input))
        .map_err(|e| avro_err("decoding", T::NAME, e))?;
    if input.eof {
        return Err(SchemaError::shape(T::NAME, "<body>", "the body is truncated"));
    }
    if !input.rest.is_empty() {
        return Err(SchemaError::shape(
            T::NAME,
            "<body>",
            format!("{} bytes left over after the record", input.rest.len()),
        ));
    }
    T::from_value(value)
}

fn avro_err(stage: &'static str, record: &'static str, e: apache_avro::Error) -> SchemaError {
    SchemaError::Avro {
        stage,
        record,
        source: Box::new(e),
    }
}

/// Parses one of the embedded schema texts, panicking with the file's problem:
/// the texts are compiled in and covered by tests.
fn parse_embedded(avsc: &str, name: &str) -> Schema {
    Schema::parse_str(avsc).unwrap_or_else(|e| panic!("embedded schema {name} does not parse: {e}"))
}

/// Decodes a body of the current schema through `apache_avro`'s generic
/// reader (the value tree), the reference the fast readers are tested against.
pub fn decode_generic<T: AvroRecord>(body: &[u8]) -> Result<T, SchemaError> {
    decode_body(body, T::schema(), None)
}

/// Avro binary of `record` through `apache_avro`'s generic writer (the value
/// tree), the reference the fast writers are tested against.
pub fn encode_generic<T: AvroRecord>(record: &T) -> Result<Vec<u8>, SchemaError> {
    write_datum(T::schema(), record.to_value()).map_err(|e| avro_err("encoding", T::NAME, e))
}

/// The Avro binary of `value` written with `schema` (any schema: tests use
/// it to write records of older schema versions).
pub fn write_datum(schema: &Schema, value: Value) -> Result<Vec<u8>, apache_avro::Error> {
    apache_avro::writer::datum::GenericDatumWriter::builder(schema)
        .build()?
        .write_value_to_vec(value)
}

/// Decodes a Confluent-framed record whose writer schema is found by id.
///
/// `writer_schema` maps the id in the frame to the schema it names (a registry
/// client with a cache, or a fixed map in tests).
pub fn decode_wire<T, F>(bytes: &[u8], writer_schema: F) -> Result<(u32, T), SchemaError>
where
    T: AvroRecord,
    F: FnOnce(u32) -> Result<Arc<Schema>, SchemaError>,
{
    let (id, body) = wire::unframe(bytes)?;
    let writer = writer_schema(id)?;
    Ok((id, T::decode_from(body, &writer)?))
}
