//! The [`AvroRecord`] implementations of the four records: their schemas,
//! their value trees, and the fast paths `ContextEvent` and `MotionWindow`
//! take instead.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use apache_avro::types::Value;
use apache_avro::Schema;

use super::signals::{signals_from, signals_value};
use super::value::{axes, null_or, record, string, ts, uuid, Fields};
use super::{fast_read, fast_write, parse_embedded, AvroRecord};
use crate::contract;
use crate::error::SchemaError;
use crate::event::{ContextEvent, DeviceFacts, Motion, Sdk};
use crate::records::{ActivityTag, ClassProbability, DeadLetter, MotionWindow};
use crate::wire;

macro_rules! schema_once {
    ($avsc:expr, $name:expr) => {{
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| parse_embedded($avsc, $name))
    }};
}

// ---- ContextEvent ------------------------------------------------------------

impl AvroRecord for ContextEvent {
    const NAME: &'static str = "ContextEvent";
    const AVSC: &'static str = contract::CONTEXT_EVENT_AVSC;

    fn schema() -> &'static Schema {
        schema_once!(Self::AVSC, "context_event.avsc")
    }

    fn encode(&self) -> Result<Vec<u8>, SchemaError> {
        let mut buf = Vec::with_capacity(4096);
        fast_write::context_event(self, &mut buf);
        Ok(buf)
    }

    fn decode(body: &[u8]) -> Result<Self, SchemaError> {
        fast_read::context_event(body).map_err(|problem| SchemaError::shape(Self::NAME, "<body>", problem))
    }

    fn to_wire(&self, schema_id: u32) -> Result<Vec<u8>, SchemaError> {
        let mut buf = Vec::with_capacity(4096);
        wire::write_header(schema_id, &mut buf);
        fast_write::context_event(self, &mut buf);
        Ok(buf)
    }

    fn to_value(&self) -> Value {
        let extra: HashMap<String, Value> = self.device.extra.iter().map(|(k, v)| (k.clone(), string(v))).collect();
        record(vec![
            ("event_id", uuid(self.event_id)),
            ("batch_id", uuid(self.batch_id)),
            ("app_id", string(&self.app_id)),
            ("session_id", uuid(self.session_id)),
            ("install_id", uuid(self.install_id)),
            (
                "sdk",
                record(vec![
                    ("name", string(&self.sdk.name)),
                    ("version", string(&self.sdk.version)),
                ]),
            ),
            (
                "device",
                record(vec![
                    ("model", string(&self.device.model)),
                    ("os_name", string(&self.device.os_name)),
                    ("os_version", string(&self.device.os_version)),
                    ("extra", Value::Map(extra)),
                ]),
            ),
            ("client_timestamp", ts(self.client_timestamp)),
            ("sent_at", ts(self.sent_at)),
            ("received_at", ts(self.received_at)),
            ("timestamp", ts(self.timestamp)),
            ("time_suspect", Value::Boolean(self.time_suspect)),
            ("signals", signals_value(&self.signals)),
            (
                "motion",
                null_or(self.motion.as_ref().map(|m| {
                    record(vec![
                        ("sample_rate_hz", Value::Double(m.sample_rate_hz)),
                        ("accelerometer", axes(&m.accelerometer)),
                        ("gyroscope", axes(&m.gyroscope)),
                    ])
                })),
            ),
        ])
    }

    fn from_value(value: Value) -> Result<Self, SchemaError> {
        let mut f = Fields::new(Self::NAME, "", value)?;
        let mut sdk = f.sub("sdk")?;
        let mut device = f.sub("device")?;
        let extra = match device.take("extra")? {
            Value::Map(m) => m
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    other => Err(device.err("extra", format!("expected string values, got {other:?}"))),
                })
                .collect::<Result<BTreeMap<_, _>, _>>()?,
            other => return Err(device.err("extra", format!("expected a map, got {other:?}"))),
        };
        let motion = match f.optional("motion")? {
            None => None,
            Some(v) => {
                let mut m = Fields::new(Self::NAME, "motion", v)?;
                Some(Motion {
                    sample_rate_hz: m.double("sample_rate_hz")?,
                    accelerometer: m.axes("accelerometer")?,
                    gyroscope: m.axes("gyroscope")?,
                })
            }
        };
        Ok(ContextEvent {
            event_id: f.uuid("event_id")?,
            batch_id: f.uuid("batch_id")?,
            app_id: f.string("app_id")?,
            session_id: f.uuid("session_id")?,
            install_id: f.uuid("install_id")?,
            sdk: Sdk {
                name: sdk.string("name")?,
                version: sdk.string("version")?,
            },
            device: DeviceFacts {
                model: device.string("model")?,
                os_name: device.string("os_name")?,
                os_version: device.string("os_version")?,
                extra,
            },
            client_timestamp: f.timestamp("client_timestamp")?,
            sent_at: f.timestamp("sent_at")?,
            received_at: f.timestamp("received_at")?,
            timestamp: f.timestamp("timestamp")?,
            time_suspect: f.boolean("time_suspect")?,
            signals: signals_from(f.sub("signals")?)?,
            motion,
        })
    }
}

// ---- MotionWindow ------------------------------------------------------------

impl AvroRecord for MotionWindow {
    const NAME: &'static str = "MotionWindow";
    const AVSC: &'static str = contract::MOTION_WINDOW_AVSC;

    fn schema() -> &'static Schema {
        schema_once!(Self::AVSC, "motion_window.avsc")
    }

    fn to_value(&self) -> Value {
        record(vec![
            ("event_id", uuid(self.event_id)),
            ("app_id", string(&self.app_id)),
            ("session_id", uuid(self.session_id)),
            ("install_id", uuid(self.install_id)),
            ("timestamp", ts(self.timestamp)),
            ("sample_rate_hz", Value::Double(self.sample_rate_hz)),
            ("accelerometer", axes(&self.accelerometer)),
            ("gyroscope", axes(&self.gyroscope)),
        ])
    }

    /// Written straight into bytes (the router projects every event with
    /// motion); a test checks the bytes against `apache_avro`'s.
    fn encode(&self) -> Result<Vec<u8>, SchemaError> {
        let mut buf = Vec::with_capacity(128 + 24 * self.accelerometer.x.len());
        fast_write::motion_window(self, &mut buf);
        Ok(buf)
    }

    fn to_wire(&self, schema_id: u32) -> Result<Vec<u8>, SchemaError> {
        let mut buf = Vec::with_capacity(133 + 24 * self.accelerometer.x.len());
        wire::write_header(schema_id, &mut buf);
        fast_write::motion_window(self, &mut buf);
        Ok(buf)
    }

    fn from_value(value: Value) -> Result<Self, SchemaError> {
        let mut f = Fields::new(Self::NAME, "", value)?;
        Ok(MotionWindow {
            event_id: f.uuid("event_id")?,
            app_id: f.string("app_id")?,
            session_id: f.uuid("session_id")?,
            install_id: f.uuid("install_id")?,
            timestamp: f.timestamp("timestamp")?,
            sample_rate_hz: f.double("sample_rate_hz")?,
            accelerometer: f.axes("accelerometer")?,
            gyroscope: f.axes("gyroscope")?,
        })
    }
}

// ---- ActivityTag -------------------------------------------------------------

impl AvroRecord for ActivityTag {
    const NAME: &'static str = "ActivityTag";
    const AVSC: &'static str = contract::ACTIVITY_TAG_AVSC;

    fn schema() -> &'static Schema {
        schema_once!(Self::AVSC, "activity_tag.avsc")
    }

    fn to_value(&self) -> Value {
        let probabilities = self
            .probabilities
            .iter()
            .map(|p| {
                record(vec![
                    ("label", string(&p.label)),
                    ("probability", Value::Float(p.probability)),
                ])
            })
            .collect();
        record(vec![
            ("event_id", uuid(self.event_id)),
            ("app_id", string(&self.app_id)),
            ("session_id", uuid(self.session_id)),
            ("install_id", uuid(self.install_id)),
            ("timestamp", ts(self.timestamp)),
            ("model_version", string(&self.model_version)),
            ("activity", string(&self.activity)),
            ("confidence", Value::Float(self.confidence)),
            ("probabilities", Value::Array(probabilities)),
            ("tagged_at", ts(self.tagged_at)),
            ("reason", null_or(self.reason.as_deref().map(string))),
        ])
    }

    fn from_value(value: Value) -> Result<Self, SchemaError> {
        let mut f = Fields::new(Self::NAME, "", value)?;
        let probabilities = match f.take("probabilities")? {
            Value::Array(items) => items
                .into_iter()
                .map(|item| {
                    let mut p = Fields::new(Self::NAME, "probabilities[]", item)?;
                    Ok(ClassProbability {
                        label: p.string("label")?,
                        probability: p.float("probability")?,
                    })
                })
                .collect::<Result<Vec<_>, SchemaError>>()?,
            other => return Err(f.err("probabilities", format!("expected an array, got {other:?}"))),
        };
        Ok(ActivityTag {
            event_id: f.uuid("event_id")?,
            app_id: f.string("app_id")?,
            session_id: f.uuid("session_id")?,
            install_id: f.uuid("install_id")?,
            timestamp: f.timestamp("timestamp")?,
            model_version: f.string("model_version")?,
            activity: f.string("activity")?,
            confidence: f.float("confidence")?,
            probabilities,
            tagged_at: f.timestamp("tagged_at")?,
            reason: f.opt_string("reason")?,
        })
    }
}

// ---- DeadLetter --------------------------------------------------------------

impl AvroRecord for DeadLetter {
    const NAME: &'static str = "DeadLetter";
    const AVSC: &'static str = contract::DEAD_LETTER_AVSC;

    fn schema() -> &'static Schema {
        schema_once!(Self::AVSC, "dead_letter.avsc")
    }

    fn to_value(&self) -> Value {
        record(vec![
            ("source", string(&self.source)),
            ("reason", string(&self.reason)),
            ("detail", string(&self.detail)),
            ("source_topic", null_or(self.source_topic.as_deref().map(string))),
            ("source_partition", null_or(self.source_partition.map(Value::Int))),
            ("source_offset", null_or(self.source_offset.map(Value::Long))),
            ("app_id", null_or(self.app_id.as_deref().map(string))),
            ("event_id", null_or(self.event_id.as_deref().map(string))),
            ("failed_at", ts(self.failed_at)),
            ("payload", Value::Bytes(self.payload.clone())),
        ])
    }

    fn from_value(value: Value) -> Result<Self, SchemaError> {
        let mut f = Fields::new(Self::NAME, "", value)?;
        let source_partition = match f.optional("source_partition")? {
            None => None,
            Some(Value::Int(i)) => Some(i),
            Some(other) => return Err(f.err("source_partition", format!("expected an int, got {other:?}"))),
        };
        let source_offset = match f.optional("source_offset")? {
            None => None,
            Some(Value::Long(l)) => Some(l),
            Some(other) => return Err(f.err("source_offset", format!("expected a long, got {other:?}"))),
        };
        let payload = match f.take("payload")? {
            Value::Bytes(b) => b,
            other => return Err(f.err("payload", format!("expected bytes, got {other:?}"))),
        };
        Ok(DeadLetter {
            source: f.string("source")?,
            reason: f.string("reason")?,
            detail: f.string("detail")?,
            source_topic: f.opt_string("source_topic")?,
            source_partition,
            source_offset,
            app_id: f.opt_string("app_id")?,
            event_id: f.opt_string("event_id")?,
            failed_at: f.timestamp("failed_at")?,
            payload,
        })
    }
}
