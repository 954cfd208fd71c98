//! The CPU part of a request, with no I/O: decompress, parse, validate,
//! encode. The service runs it off the reactor; the benchmark and the fuzz
//! target call it directly.

use context_schemas::AvroRecord;
use uuid::Uuid;

use crate::batch::{decompress, parse_batch, Encoding};
use crate::error::BatchError;
use crate::validate::{Envelope, Rejection, Validator};

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
    /// Confluent-framed Avro of each accepted event, in batch order.
    pub accepted: Vec<Vec<u8>>,
    pub rejected: Vec<RejectedEvent>,
}

/// Turns a request body into encoded events and rejections. `sent_at` is the
/// request's `X-Sent-At` (overriding the body's `sent_at`), when it has one.
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
    let limits = &validator.limits;
    let json = decompress(body, encoding, limits.max_decompressed_bytes)?;
    let batch = parse_batch(&json, limits)?;
    let env = Envelope::from_batch(&batch, app_id, received_at, sent_at)?;
    let mut time_suspect = 0;
    let mut accepted = Vec::with_capacity(batch.events.len());
    let mut rejected = Vec::new();
    let mut unknown_signals = 0;
    let mut unknown_fields = batch.sdk.unknown.len();
    for (index, raw) in batch.events.iter().enumerate() {
        match validator.event(&env, raw) {
            Ok(valid) => {
                time_suspect += usize::from(valid.event.time_suspect);
                unknown_signals += valid.unknown_signals;
                unknown_fields += valid.unknown_fields;
                let value = valid
                    .event
                    .to_wire(schema_id)
                    .map_err(|e| BatchError::NotABatch(format!("event {index} cannot be encoded: {e}")))?;
                if value.len() > limits.max_record_bytes {
                    // Kafka would refuse it on every retry: a reject, kept whole.
                    rejected.push(RejectedEvent {
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
                        raw: raw.get().as_bytes().to_vec(),
                    });
                    continue;
                }
                accepted.push(value);
            }
            Err(rejection) => rejected.push(RejectedEvent {
                index,
                event_id: Validator::event_id_of(raw),
                rejection,
                raw: raw.get().as_bytes().to_vec(),
            }),
        }
    }
    Ok(PreparedBatch {
        envelope: if rejected.is_empty() {
            String::new()
        } else {
            env.to_json()
        },
        batch_id: env.batch_id,
        key: env.install_id.to_string().into_bytes(),
        received_at,
        events: batch.events.len(),
        time_suspect,
        unknown_signals,
        unknown_fields,
        accepted,
        rejected,
    })
}
