//! The OpenAPI 3 document of the ingest API, generated from the code: the
//! signal properties come from the catalogue (type, unit, range, allowed
//! values), the limits from the running configuration, the rejection reasons
//! from [`REJECTION_REASONS`].

use context_schemas::catalog::{catalog, SignalKind};
use serde_json::{json, Map, Value};

use crate::config::Limits;
use crate::validate::{MAX_DETAIL_BYTES, MAX_MESSAGE_BYTES, MAX_QUOTED_BYTES};

/// Every reason code an event can be rejected with, and what it means.
pub const REJECTION_REASONS: &[(&str, &str)] = &[
    ("malformed_event", "the event is not an object of the documented shape"),
    ("invalid_event_id", "event_id is not a UUID"),
    ("invalid_timestamp", "timestamp is not an RFC 3339 time"),
    ("invalid_signal", "a signal has the wrong JSON type for its Avro type"),
    (
        "signal_out_of_range",
        "a numeric signal is outside its documented range",
    ),
    (
        "signal_not_allowed",
        "an enumerated string signal has a value not in its list",
    ),
    ("signal_too_long", "a free-text signal is longer than its max_length"),
    (
        "invalid_motion",
        "motion samples are malformed, non-finite, too many, or the rate is out of range",
    ),
    (
        "implausible_motion",
        "motion is not in the API's units: the accelerometer's median magnitude is outside 0.2–4 g (m/s², milli-g, or no gravity) or the gyroscope's over 35 rad/s (degrees per second)",
    ),
];

fn signal_schemas() -> Value {
    let mut props = Map::new();
    for s in &catalog().signals {
        let mut p = match s.kind {
            SignalKind::Double => json!({"type": "number"}),
            SignalKind::Long => json!({"type": "integer", "format": "int64"}),
            SignalKind::Boolean => json!({"type": "boolean"}),
            SignalKind::String => json!({"type": "string"}),
        };
        p["nullable"] = json!(true);
        p["description"] = json!(format!("{} Unit: {}. Group: {}.", s.doc, s.unit, s.group));
        if let (Some(min), Some(max)) = (s.min, s.max) {
            p["minimum"] = json!(min);
            p["maximum"] = json!(max);
        }
        if let Some(allowed) = &s.allowed {
            p["enum"] = json!(allowed);
        }
        if let Some(len) = s.max_length {
            p["maxLength"] = json!(len);
        }
        props.insert(s.name.clone(), p);
    }
    json!({
        "type": "object",
        "description": "About 170 named signals, all optional. Unknown names (from a newer SDK) are counted and dropped.",
        "properties": props,
        "additionalProperties": true,
    })
}

fn error_response(description: &str, retry_after: bool) -> Value {
    let mut r = json!({
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    });
    if retry_after {
        r["headers"] =
            json!({"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}});
    }
    r
}

/// The document, with the limits of this gateway.
pub fn document(limits: &Limits) -> Value {
    let reasons: Vec<&str> = REJECTION_REASONS.iter().map(|(r, _)| *r).collect();
    let reason_doc: Vec<String> = REJECTION_REASONS.iter().map(|(r, d)| format!("`{r}`: {d}")).collect();
    // Apart from the document: one json! of all of it nests too deep for
    // the macro's recursion limit.
    let rejected = json!({"type": "object", "properties": {
        "index": {"type": "integer"},
        "event_id": {"type": "string", "nullable": true, "maxLength": MAX_QUOTED_BYTES,
            "description": "As sent; a longer one (never a UUID) is cut and ends in …"},
        "reason": {"type": "string", "enum": reasons, "description": reason_doc.join("; ")},
        "detail": {"type": "string", "maxLength": MAX_DETAIL_BYTES,
            "description": format!("What was wrong; input it quotes is cut to {MAX_QUOTED_BYTES} bytes, ending in …")}}});
    let sample = json!({"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
        "maxItems": limits.max_samples});
    let mut accelerometer = sample.clone();
    accelerometer["description"] = json!(
        "[x, y, z] in g, gravity included, with Core Motion's sign (CMAccelerometerData: a phone lying face up reads about [0, 0, -1]; Android's m/s² are divided by 9.80665 and negated). A window whose median magnitude is outside 0.2–4 g is refused as implausible_motion."
    );
    let mut gyroscope = sample;
    gyroscope["description"] = json!(
        "[x, y, z] rotation rate in rad/s (CMGyroData). A window whose median magnitude is over 35 rad/s (degrees per second sent as radians) is refused as implausible_motion. An empty list: a device without a gyroscope."
    );
    let forget = json!({"post": {
        "summary": "Erase this install's data (the app's \"delete my data\")",
        "description": "Writes a request to the forget ledger (context.forget.v1, acks=all). Every stage then drops the install's events captured up to the request, also in replays, redrives and batches the phone sends late, and the sink deletes the rows already stored (events, activity tags, dead letters). What the install sends after the request is kept. Asking again is safe: it moves the request's time forward.",
        "security": [{"apiKey": []}],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ForgetRequest"}}}},
        "responses": {
            "202": {"description": "The request is durably in the forget ledger; erasure follows.",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ForgetAccepted"}}}},
            "400": error_response("error `bad_request`: the body is not {\"install_id\": \"<uuid>\"}.", false),
            "401": error_response("Missing or unknown API key.", false),
            "403": error_response("The key is revoked or the app disabled.", false),
            "413": error_response("The body is over 4096 bytes.", false),
            "415": error_response("Unsupported Content-Type (send application/json).", false),
            "429": error_response("The app is over its rate limit (a request costs one event).", true),
            "503": error_response("Kafka cannot take the request now, the ledger is full (max_forgotten_installs), or the gateway is shutting down: send it again after Retry-After.", true),
        }
    }});
    let forget_schemas = json!({
        "ForgetRequest": {"type": "object", "required": ["install_id"], "properties": {
            "install_id": {"type": "string", "format": "uuid", "description": "The install whose data is erased, of the app the key belongs to."}}},
        "ForgetAccepted": {"type": "object", "required": ["request_id", "install_id", "requested_at"], "properties": {
            "request_id": {"type": "string", "format": "uuid", "description": "What `sink-clickhouse forget status` shows it under."},
            "install_id": {"type": "string", "format": "uuid"},
            "requested_at": {"type": "string", "format": "date-time", "description": "Records captured up to this time are erased."}}},
    });
    let mut doc = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "context-events ingest API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Mobile SDKs send one session's events per request. 200 means every accepted event is durably in Kafka (acks=all) and every rejected one is in the dead-letter topic: the client may delete the batch. Every other answer is safe to retry with the same body; duplicates are removed downstream by event_id.",
        },
        "paths": {"/v1/batch": {"post": {
            "summary": "Send one session's batch of events",
            "security": [{"apiKey": []}],
            "parameters": [{"name": "Content-Encoding", "in": "header", "required": false,
                "schema": {"type": "string", "enum": ["identity", "gzip", "zstd"]}},
                {"name": "X-Sent-At", "in": "header", "required": false,
                "description": "Device time of this attempt (RFC 3339), set on every send, retries included; overrides the body's sent_at so a stored body can be resent unchanged. Clock skew is received_at - X-Sent-At.",
                "schema": {"type": "string", "format": "date-time"}}],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}}},
            "responses": {
                "200": {"description": "Every accepted event is acknowledged by Kafka; rejected ones are dead-lettered.",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                "400": error_response("The body is not a batch at all: bad JSON, missing or invalid envelope fields, bad compression.", false),
                "401": error_response("Missing or unknown API key.", false),
                "403": error_response("The key is revoked or the app disabled.", false),
                "413": error_response(&format!(
                    "Over a limit: body {} bytes, decompressed {} bytes, {} events per batch.",
                    limits.max_body_bytes, limits.max_decompressed_bytes, limits.max_events), false),
                "409": error_response("error `batch_id_reused`: this batch_id was answered within the gateway's dedup_window for a different body (an SDK reusing batch ids). Nothing of this body was stored and none of its events may be deleted: send them again under a new batch_id, or this body again after Retry-After (seconds until the first answer is forgotten).", true),
                "415": error_response("Unsupported Content-Type (send application/json) or Content-Encoding.", false),
                "429": error_response("The app is over its rate limit: events per second (its key's), or decompressed bytes per second (the gateway's rate_limit_bytes_per_s).", true),
                "503": error_response("Kafka cannot take the batch now (down, slow, queue full), too many bytes in flight (checked while the body is read, from its Content-Length), the body paused longer than body_read_timeout (or took 4 times it in all) or was cut off, the consumers are too far behind (error \"backpressure\": unread records could expire before they are read), or the gateway is shutting down.", true),
            }
        }}},
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer", "description": "The app's API key; the app_id comes from it."}},
            "schemas": {
                "Batch": {"type": "object", "required": ["batch_id", "sent_at", "sdk", "device", "session_id", "events"], "properties": {
                    "batch_id": {"type": "string", "format": "uuid", "description": "Chosen by the client, stable across retries."},
                    "sent_at": {"type": "string", "format": "date-time", "description": "Device time when the body was built; used to correct clock skew unless the request has an X-Sent-At header (the time of this attempt), which takes precedence."},
                    "sdk": {"type": "object", "required": ["name", "version"], "properties": {"name": {"type": "string"}, "version": {"type": "string"}}},
                    "device": {"type": "object", "required": ["install_id", "model", "os_version"], "additionalProperties": true, "properties": {
                        "install_id": {"type": "string", "format": "uuid"}, "model": {"type": "string"},
                        "os_name": {"type": "string", "default": "iOS"}, "os_version": {"type": "string"}}},
                    "session_id": {"type": "string", "format": "uuid"},
                    "events": {"type": "array", "maxItems": limits.max_events, "items": {"$ref": "#/components/schemas/Event"}},
                }},
                "Event": {"type": "object", "required": ["event_id", "timestamp"], "properties": {
                    "event_id": {"type": "string", "format": "uuid", "description": "Chosen by the client; the deduplication key."},
                    "timestamp": {"type": "string", "format": "date-time", "description": "Device time of capture."},
                    "signals": {"$ref": "#/components/schemas/Signals"},
                    "motion": {"type": "object", "required": ["sample_rate_hz"], "properties": {
                        "sample_rate_hz": {"type": "number", "minimum": 1, "maximum": 800},
                        "accelerometer": accelerometer, "gyroscope": gyroscope}},
                }},
                "Signals": signal_schemas(),
                "Accepted": {"type": "object", "required": ["accepted", "rejected"], "properties": {
                    "accepted": {"type": "integer"},
                    "rejected": {"type": "array", "items": rejected},
                }},
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string", "maxLength": MAX_MESSAGE_BYTES}}},
            }
        }
    });
    doc["paths"]["/v1/forget"] = forget;
    if let (Some(schemas), Value::Object(more)) = (doc["components"]["schemas"].as_object_mut(), forget_schemas) {
        schemas.extend(more);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_carries_every_signal_and_the_limits() {
        let limits = Limits {
            max_events: 77,
            ..Limits::default()
        };
        let doc = document(&limits);
        let props = doc["components"]["schemas"]["Signals"]["properties"]
            .as_object()
            .unwrap();
        assert_eq!(props.len(), catalog().len());
        assert_eq!(props["battery_level"]["maximum"], 1.0);
        assert_eq!(props["network_type"]["enum"][1], "wifi");
        assert_eq!(
            doc["components"]["schemas"]["Batch"]["properties"]["events"]["maxItems"],
            77
        );
        for status in ["200", "400", "401", "403", "409", "413", "415", "429", "503"] {
            assert!(
                doc["paths"]["/v1/batch"]["post"]["responses"][status].is_object(),
                "{status}"
            );
        }
        for status in ["202", "400", "401", "403", "413", "415", "429", "503"] {
            assert!(
                doc["paths"]["/v1/forget"]["post"]["responses"][status].is_object(),
                "{status}"
            );
        }
        assert!(doc["components"]["schemas"]["ForgetAccepted"].is_object());
    }
}
