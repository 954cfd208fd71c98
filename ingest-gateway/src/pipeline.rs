//! The CPU part of a request, with no I/O: decompress, parse, validate,
//! encode. The service runs it off the reactor; the benchmark and the fuzz
//! target call it directly.

use context_schemas::AvroRecord;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::batch::{decompress_within, parse_batch, Encoding};
use crate::config::Limits;
use crate::error::BatchError;
use crate::onepass;
use crate::validate::{Envelope, Rejection, Valid, Validator};

/// An event the gateway refused, with its original JSON for the dead letter.
#[derive(Debug)]
pub struct RejectedEvent {
    pub index: usize,
    pub event_id: Option<String>,
    pub rejection: Rejection,
    pub raw: Vec<u8>,
}

/// A batch ready to produce.
#[derive(Debug)]
pub struct PreparedBatch {
    pub batch_id: Uuid,
    /// The Kafka key of every record: the install id.
    pub key: Vec<u8>,
    pub received_at: i64,
    pub events: usize,
    /// Accepted events whose corrected time is outside the plausible window.
    pub time_suspect: usize,
    pub unknown_signals: usize,
    /// Fields of the `sdk` object, the events or their motion that this
    /// gateway does not know (a newer SDK's), skipped.
    pub unknown_fields: usize,
    /// The envelope as JSON for the dead letters (empty without rejects).
    pub envelope: String,
    /// Bytes of the decompressed body (what the per-app byte rate counts).
    pub json_bytes: usize,
    /// SHA-256 of the decompressed body: a repeated `batch_id` is answered
    /// from memory only when its body has the same digest.
    pub digest: [u8; 32],
    /// Confluent-framed Avro of each accepted event, in batch order.
    pub accepted: Vec<Vec<u8>>,
    pub rejected: Vec<RejectedEvent>,
}

/// Turns a request body into encoded events and rejections. `sent_at` is the
/// request's `X-Sent-At` (overriding the body's `sent_at`), when it has one.
///
/// The one-pass reader ([`crate::onepass`]) reads the body when every event
/// in it is accepted; anything else (an error, a rejected event, input it
/// does not read) goes through the generic path, which gives every answer
/// its wording. Both give the same batch for the same body.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    body: &[u8],
    encoding: Encoding,
    app_id: &str,
    received_at: i64,
    sent_at: Option<i64>,
    validator: &Validator,
    schema_id: u32,
) -> Result<PreparedBatch, BatchError> {
    let request = Request {
        app_id,
        received_at,
        sent_at,
        schema_id,
    };
    prepare_within(body, encoding, &request, validator, &mut |_| true)
}

/// [`prepare`], asking `grow` before the decompressed body's buffer grows
/// (see [`crate::batch::decompress_within`]).
pub fn prepare_within(
    body: &[u8],
    encoding: Encoding,
    request: &Request<'_>,
    validator: &Validator,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<PreparedBatch, BatchError> {
    let json = decompress_within(body, encoding, validator.limits.max_decompressed_bytes, grow)?;
    if let Some(done) = prepare_onepass(&json, request, validator) {
        return Ok(done);
    }
    prepare_generic(&json, request, validator)
}

/// What a body is prepared with besides its bytes: the app the API key
/// names, the server's time, the `X-Sent-At` header, the schema id.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub app_id: &'a str,
    pub received_at: i64,
    pub sent_at: Option<i64>,
    pub schema_id: u32,
}

/// The fast path alone, on a decompressed body: `None` when the one-pass
/// reader gives up or an event is rejected.
pub fn prepare_onepass(json: &[u8], request: &Request<'_>, validator: &Validator) -> Option<PreparedBatch> {
    let limits = &validator.limits;
    let read = onepass::read(json, limits.max_events, limits.max_samples)?;
    let batch = parse_batch(read.envelope.as_bytes(), limits).ok()?;
    let env = Envelope::from_batch(&batch, request.app_id, request.received_at, request.sent_at).ok()?;
    let mut out = Collect::new(&env, read.events.len(), batch.sdk.unknown.len());
    for (index, event) in read.events.into_iter().enumerate() {
        let valid = validator.finish(&env, event.parts).ok()?;
        out.accept(index, valid, event.raw, request.schema_id, limits).ok()?;
    }
    Some(out.finish(&env, json))
}

/// The generic path alone, on a decompressed body: serde_json reads the
/// envelope with each event as raw JSON, then each event on its own, so one
/// bad event is rejected alone.
pub fn prepare_generic(json: &[u8], request: &Request<'_>, validator: &Validator) -> Result<PreparedBatch, BatchError> {
    let limits = &validator.limits;
    let batch = parse_batch(json, limits)?;
    let env = Envelope::from_batch(&batch, request.app_id, request.received_at, request.sent_at)?;
    let mut out = Collect::new(&env, batch.events.len(), batch.sdk.unknown.len());
    for (index, raw) in batch.events.iter().enumerate() {
        match validator.event(&env, raw) {
            Ok(valid) => out.accept(index, valid, raw.get(), request.schema_id, limits)?,
            Err(rejection) => out.batch.rejected.push(RejectedEvent {
                index,
                event_id: Validator::event_id_of(raw),
                rejection,
                raw: raw.get().as_bytes().to_vec(),
            }),
        }
    }
    Ok(out.finish(&env, json))
}

/// A batch being put together, event by event.
struct Collect {
    batch: PreparedBatch,
}

impl Collect {
    fn new(env: &Envelope, events: usize, unknown_sdk_fields: usize) -> Self {
        Collect {
            batch: PreparedBatch {
                batch_id: env.batch_id,
                key: env.install_id.to_string().into_bytes(),
                received_at: env.received_at,
                events,
                time_suspect: 0,
                unknown_signals: 0,
                unknown_fields: unknown_sdk_fields,
                envelope: String::new(),
                json_bytes: 0,
                digest: [0; 32],
                accepted: Vec::with_capacity(events),
                rejected: Vec::new(),
            },
        }
    }

    /// Encodes a valid event; one too large for a record is a reject, kept
    /// whole with its JSON as sent.
    fn accept(
        &mut self,
        index: usize,
        valid: Valid,
        raw: &str,
        schema_id: u32,
        limits: &Limits,
    ) -> Result<(), BatchError> {
        let b = &mut self.batch;
        b.time_suspect += usize::from(valid.event.time_suspect);
        b.unknown_signals += valid.unknown_signals;
        b.unknown_fields += valid.unknown_fields;
        let value = valid
            .event
            .to_wire(schema_id)
            .map_err(|e| BatchError::NotABatch(format!("event {index} cannot be encoded: {e}")))?;
        if value.len() > limits.max_record_bytes {
            // Kafka would refuse it on every retry: a reject, kept whole.
            b.rejected.push(RejectedEvent {
                index,
                event_id: Some(valid.event.event_id.to_string()),
                rejection: Rejection::new(
                    "event_too_large",
                    format!(
                        "the event is {} bytes as a record; the limit is {} (max_record_bytes)",
                        value.len(),
                        limits.max_record_bytes
                    ),
                ),
                raw: raw.as_bytes().to_vec(),
            });
        } else {
            b.accepted.push(value);
        }
        Ok(())
    }

    /// The batch, with what it needs of the decompressed body `json` it
    /// was read from (hashed only here, once per body, whichever path read it).
    fn finish(mut self, env: &Envelope, json: &[u8]) -> PreparedBatch {
        if !self.batch.rejected.is_empty() {
            self.batch.envelope = env.to_json();
        }
        self.batch.json_bytes = json.len();
        self.batch.digest = Sha256::digest(json).into();
        self.batch
    }
}
