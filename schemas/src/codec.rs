//! Lossless conversion between the Rust types and Avro binary.
//!
//! Each record type implements [`AvroRecord`]: its schema is parsed once from
//! the embedded `.avsc`, values are built field by field, and decoding can
//! resolve data written with an older (or newer) writer schema into the
//! current Rust type, following Avro's schema resolution rules.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use apache_avro::types::Value;
use apache_avro::Schema;
use uuid::Uuid;

use crate::catalog::catalog;
use crate::contract;
use crate::error::SchemaError;
use crate::event::{Axes3, ContextEvent, DeviceFacts, Motion, Sdk, SignalValue, Signals};
use crate::records::{ActivityTag, ClassProbability, DeadLetter, MotionWindow};
use crate::wire;

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
        apache_avro::to_avro_datum(Self::schema(), self.to_value()).map_err(|e| avro_err("encoding", Self::NAME, e))
    }

    /// Decodes a body written with the current schema.
    fn decode(body: &[u8]) -> Result<Self, SchemaError> {
        decode_body(body, Self::schema(), None)
    }

    /// Decodes a body written with `writer`, resolving it into the current
    /// schema. Callers that decode many records of one writer should check
    /// [`Self::is_current`] once and call [`Self::decode`] when it holds.
    fn decode_from(body: &[u8], writer: &Schema) -> Result<Self, SchemaError> {
        if Self::is_current(writer) {
            decode_body(body, writer, None)
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
    let value =
        apache_avro::from_avro_datum(writer, &mut input, reader).map_err(|e| avro_err("decoding", T::NAME, e))?;
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

/// A reader that remembers whether the decoder ever asked for bytes past the
/// end. apache-avro reads a union, boolean or string cut off by the end of
/// the input as null instead of failing; this turns that into an error, so a
/// truncated body can never decode into an event with signals missing.
struct StrictReader<'a> {
    rest: &'a [u8],
    eof: bool,
}

impl std::io::Read for StrictReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !buf.is_empty() && self.rest.is_empty() {
            self.eof = true;
        }
        self.rest.read(buf)
    }
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

macro_rules! schema_once {
    ($avsc:expr, $name:expr) => {{
        static SCHEMA: OnceLock<Schema> = OnceLock::new();
        SCHEMA.get_or_init(|| parse_embedded($avsc, $name))
    }};
}

// ---- building values -------------------------------------------------------

fn record(fields: Vec<(&str, Value)>) -> Value {
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn uuid(u: Uuid) -> Value {
    Value::Uuid(u)
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn ts(micros: i64) -> Value {
    Value::TimestampMicros(micros)
}

fn null_or(v: Option<Value>) -> Value {
    match v {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn floats(values: &[f32]) -> Value {
    Value::Array(values.iter().map(|&f| Value::Float(f)).collect())
}

fn axes(a: &Axes3) -> Value {
    record(vec![("x", floats(&a.x)), ("y", floats(&a.y)), ("z", floats(&a.z))])
}

// ---- reading values --------------------------------------------------------

/// The fields of a decoded record, taken out by name.
struct Fields {
    record: &'static str,
    path: String,
    fields: Vec<(String, Value)>,
}

impl Fields {
    fn new(record: &'static str, path: &str, value: Value) -> Result<Self, SchemaError> {
        match value {
            Value::Record(fields) => Ok(Fields {
                record,
                path: path.to_owned(),
                fields,
            }),
            other => Err(SchemaError::shape(
                record,
                path,
                format!("expected a record, got {other:?}"),
            )),
        }
    }

    fn err(&self, field: &str, problem: String) -> SchemaError {
        let path = if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.path)
        };
        SchemaError::shape(self.record, path, problem)
    }

    fn take(&mut self, name: &str) -> Result<Value, SchemaError> {
        self.fields
            .iter_mut()
            .find(|(k, _)| k == name)
            .map(|(_, v)| std::mem::replace(v, Value::Null))
            .ok_or_else(|| self.err(name, "missing".into()))
    }

    fn sub(&mut self, name: &str) -> Result<Fields, SchemaError> {
        let value = self.take(name)?;
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        Fields::new(self.record, &path, value)
    }

    fn uuid(&mut self, name: &str) -> Result<Uuid, SchemaError> {
        match self.take(name)? {
            Value::Uuid(u) => Ok(u),
            Value::String(s) => Uuid::parse_str(&s).map_err(|e| self.err(name, format!("not a UUID: {e}"))),
            other => Err(self.err(name, format!("expected a UUID, got {other:?}"))),
        }
    }

    fn string(&mut self, name: &str) -> Result<String, SchemaError> {
        match self.take(name)? {
            Value::String(s) => Ok(s),
            other => Err(self.err(name, format!("expected a string, got {other:?}"))),
        }
    }

    fn timestamp(&mut self, name: &str) -> Result<i64, SchemaError> {
        match self.take(name)? {
            Value::TimestampMicros(t) | Value::Long(t) => Ok(t),
            Value::TimestampMillis(t) => Ok(t.saturating_mul(1000)),
            other => Err(self.err(name, format!("expected a timestamp, got {other:?}"))),
        }
    }

    fn double(&mut self, name: &str) -> Result<f64, SchemaError> {
        match self.take(name)? {
            Value::Double(d) => Ok(d),
            Value::Float(f) => Ok(f64::from(f)),
            other => Err(self.err(name, format!("expected a double, got {other:?}"))),
        }
    }

    fn float(&mut self, name: &str) -> Result<f32, SchemaError> {
        match self.take(name)? {
            Value::Float(f) => Ok(f),
            other => Err(self.err(name, format!("expected a float, got {other:?}"))),
        }
    }

    fn floats(&mut self, name: &str) -> Result<Vec<f32>, SchemaError> {
        match self.take(name)? {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::Float(f) => Ok(f),
                    other => Err(self.err(name, format!("expected floats, got {other:?}"))),
                })
                .collect(),
            other => Err(self.err(name, format!("expected an array, got {other:?}"))),
        }
    }

    fn axes(&mut self, name: &str) -> Result<Axes3, SchemaError> {
        let mut a = self.sub(name)?;
        Ok(Axes3 {
            x: a.floats("x")?,
            y: a.floats("y")?,
            z: a.floats("z")?,
        })
    }

    /// A `["null", T]` union: `None` for null, the inner value otherwise.
    fn optional(&mut self, name: &str) -> Result<Option<Value>, SchemaError> {
        Ok(match self.take(name)? {
            Value::Union(_, inner) => match *inner {
                Value::Null => None,
                v => Some(v),
            },
            Value::Null => None,
            v => Some(v),
        })
    }

    fn opt_string(&mut self, name: &str) -> Result<Option<String>, SchemaError> {
        match self.optional(name)? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(name, format!("expected a string, got {other:?}"))),
        }
    }
}

// ---- ContextEvent ------------------------------------------------------------

fn signal_value(v: &SignalValue) -> Value {
    match v {
        SignalValue::Double(d) => Value::Double(*d),
        SignalValue::Long(l) => Value::Long(*l),
        SignalValue::Boolean(b) => Value::Boolean(*b),
        SignalValue::String(s) => Value::String(s.clone()),
    }
}

fn signals_value(signals: &Signals) -> Value {
    let cat = catalog();
    let groups = cat
        .groups
        .iter()
        .map(|g| {
            let fields = cat.signals[g.signals.clone()]
                .iter()
                .map(|spec| (spec.name.clone(), null_or(signals.at(spec.index).map(signal_value))))
                .collect();
            (g.name.clone(), Value::Record(fields))
        })
        .collect();
    Value::Record(groups)
}

fn signals_from(mut fields: Fields) -> Result<Signals, SchemaError> {
    let cat = catalog();
    let mut signals = Signals::default();
    for (group_name, group) in std::mem::take(&mut fields.fields) {
        let Value::Record(group) = group else {
            return Err(fields.err(&group_name, "expected a record of signals".into()));
        };
        for (name, value) in group {
            // A reader schema is always the current one, so every field is in
            // the catalogue; skip defensively rather than fail a whole event.
            let Some(spec) = cat.get(&name) else { continue };
            let value = match value {
                Value::Union(_, inner) => *inner,
                v => v,
            };
            let value = match value {
                Value::Null => continue,
                Value::Double(d) => SignalValue::Double(d),
                Value::Float(f) => SignalValue::Double(f64::from(f)),
                Value::Long(l) => SignalValue::Long(l),
                Value::Int(i) => SignalValue::Long(i64::from(i)),
                Value::Boolean(b) => SignalValue::Boolean(b),
                Value::String(s) => SignalValue::String(s),
                other => {
                    return Err(fields.err(&format!("{group_name}.{name}"), format!("unexpected value {other:?}")));
                }
            };
            signals
                .set_at(spec, value)
                .map_err(|e| fields.err(&format!("{group_name}.{name}"), e.to_string()))?;
        }
    }
    Ok(signals)
}

/// Avro binary writers for the hot path: the gateway encodes every event, so
/// `ContextEvent` is written straight into bytes instead of through an
/// `apache_avro` value tree. A property test checks that both produce the
/// same bytes.
mod fast {
    use super::*;

    pub fn long(buf: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        while z >= 0x80 {
            buf.push((z as u8) | 0x80);
            z >>= 7;
        }
        buf.push(z as u8);
    }

    pub fn string(buf: &mut Vec<u8>, s: &str) {
        long(buf, s.len() as i64);
        buf.extend_from_slice(s.as_bytes());
    }

    pub fn uuid(buf: &mut Vec<u8>, u: &Uuid) {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        string(buf, u.hyphenated().encode_lower(&mut text));
    }

    pub fn floats(buf: &mut Vec<u8>, values: &[f32]) {
        if !values.is_empty() {
            long(buf, values.len() as i64);
            buf.reserve(values.len() * 4);
            for v in values {
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        long(buf, 0);
    }

    pub fn axes(buf: &mut Vec<u8>, a: &Axes3) {
        floats(buf, &a.x);
        floats(buf, &a.y);
        floats(buf, &a.z);
    }

    pub fn motion_window(w: &MotionWindow, buf: &mut Vec<u8>) {
        uuid(buf, &w.event_id);
        string(buf, &w.app_id);
        uuid(buf, &w.session_id);
        uuid(buf, &w.install_id);
        long(buf, w.timestamp);
        buf.extend_from_slice(&w.sample_rate_hz.to_le_bytes());
        axes(buf, &w.accelerometer);
        axes(buf, &w.gyroscope);
    }

    pub fn context_event(e: &ContextEvent, buf: &mut Vec<u8>) {
        uuid(buf, &e.event_id);
        uuid(buf, &e.batch_id);
        string(buf, &e.app_id);
        uuid(buf, &e.session_id);
        uuid(buf, &e.install_id);
        string(buf, &e.sdk.name);
        string(buf, &e.sdk.version);
        string(buf, &e.device.model);
        string(buf, &e.device.os_name);
        string(buf, &e.device.os_version);
        if !e.device.extra.is_empty() {
            long(buf, e.device.extra.len() as i64);
            for (k, v) in &e.device.extra {
                string(buf, k);
                string(buf, v);
            }
        }
        long(buf, 0);
        for t in [e.client_timestamp, e.sent_at, e.received_at, e.timestamp] {
            long(buf, t);
        }
        for (_, value) in e.signals.iter() {
            match value {
                None => buf.push(0),
                Some(v) => {
                    buf.push(2); // union branch 1, zig-zag encoded
                    match v {
                        SignalValue::Double(d) => buf.extend_from_slice(&d.to_le_bytes()),
                        SignalValue::Long(l) => long(buf, *l),
                        SignalValue::Boolean(b) => buf.push(u8::from(*b)),
                        SignalValue::String(s) => string(buf, s),
                    }
                }
            }
        }
        match &e.motion {
            None => buf.push(0),
            Some(m) => {
                buf.push(2);
                buf.extend_from_slice(&m.sample_rate_hz.to_le_bytes());
                axes(buf, &m.accelerometer);
                axes(buf, &m.gyroscope);
            }
        }
    }
}

/// The reading side of [`fast`]: `ContextEvent` bodies of the current
/// schema read straight from bytes, strictly (a truncated body, an unknown
/// union branch or trailing bytes are errors). Older writer schemas go
/// through `apache_avro`'s resolution instead.
mod fast_read {
    use super::*;

    pub struct Reader<'a> {
        pub bytes: &'a [u8],
        pub pos: usize,
    }

    type R<T> = Result<T, String>;

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> R<&'a [u8]> {
            let end = self
                .pos
                .checked_add(n)
                .filter(|&e| e <= self.bytes.len())
                .ok_or("the body is truncated")?;
            let s = &self.bytes[self.pos..end];
            self.pos = end;
            Ok(s)
        }

        pub fn long(&mut self) -> R<i64> {
            let mut z: u64 = 0;
            for shift in (0..64).step_by(7) {
                let b = self.take(1)?[0];
                z |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
                }
            }
            Err("a varint is longer than 10 bytes".into())
        }

        fn len(&mut self) -> R<usize> {
            usize::try_from(self.long()?).map_err(|_| "a negative length".to_string())
        }

        pub fn string(&mut self) -> R<String> {
            let n = self.len()?;
            String::from_utf8(self.take(n)?.to_vec()).map_err(|e| format!("a string is not UTF-8: {e}"))
        }

        pub fn uuid(&mut self) -> R<Uuid> {
            let n = self.len()?;
            let s = std::str::from_utf8(self.take(n)?).map_err(|e| e.to_string())?;
            Uuid::parse_str(s).map_err(|e| format!("`{s}` is not a UUID: {e}"))
        }

        fn f64(&mut self) -> R<f64> {
            Ok(f64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
        }

        fn branch(&mut self) -> R<bool> {
            match self.long()? {
                0 => Ok(false),
                1 => Ok(true),
                n => Err(format!("union branch {n} does not exist")),
            }
        }

        fn floats(&mut self) -> R<Vec<f32>> {
            let mut out = Vec::new();
            loop {
                let mut n = self.long()?;
                if n == 0 {
                    return Ok(out);
                }
                if n < 0 {
                    n = -n;
                    self.long()?; // block size in bytes
                }
                let n = n as usize;
                let raw = self.take(n.checked_mul(4).ok_or("an array is too long")?)?;
                out.extend(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
                );
            }
        }

        fn axes(&mut self) -> R<Axes3> {
            Ok(Axes3 {
                x: self.floats()?,
                y: self.floats()?,
                z: self.floats()?,
            })
        }
    }

    pub fn context_event(bytes: &[u8]) -> R<ContextEvent> {
        let mut r = Reader { bytes, pos: 0 };
        let event_id = r.uuid()?;
        let batch_id = r.uuid()?;
        let app_id = r.string()?;
        let session_id = r.uuid()?;
        let install_id = r.uuid()?;
        let sdk = Sdk {
            name: r.string()?,
            version: r.string()?,
        };
        let (model, os_name, os_version) = (r.string()?, r.string()?, r.string()?);
        let mut extra = BTreeMap::new();
        loop {
            let mut n = r.long()?;
            if n == 0 {
                break;
            }
            if n < 0 {
                n = -n;
                r.long()?;
            }
            for _ in 0..n {
                let k = r.string()?;
                extra.insert(k, r.string()?);
            }
        }
        let (client_timestamp, sent_at, received_at, timestamp) = (r.long()?, r.long()?, r.long()?, r.long()?);
        let mut signals = Signals::default();
        for spec in &catalog().signals {
            if r.branch()? {
                let v = match spec.kind {
                    crate::catalog::SignalKind::Double => SignalValue::Double(r.f64()?),
                    crate::catalog::SignalKind::Long => SignalValue::Long(r.long()?),
                    crate::catalog::SignalKind::Boolean => match r.take(1)?[0] {
                        0 => SignalValue::Boolean(false),
                        1 => SignalValue::Boolean(true),
                        b => return Err(format!("boolean byte {b}")),
                    },
                    crate::catalog::SignalKind::String => SignalValue::String(r.string()?),
                };
                signals.set_at(spec, v).map_err(|e| e.to_string())?;
            }
        }
        let motion = if r.branch()? {
            Some(Motion {
                sample_rate_hz: r.f64()?,
                accelerometer: r.axes()?,
                gyroscope: r.axes()?,
            })
        } else {
            None
        };
        if r.pos != bytes.len() {
            return Err(format!("{} bytes left over after the record", bytes.len() - r.pos));
        }
        Ok(ContextEvent {
            event_id,
            batch_id,
            app_id,
            session_id,
            install_id,
            sdk,
            device: DeviceFacts {
                model,
                os_name,
                os_version,
                extra,
            },
            client_timestamp,
            sent_at,
            received_at,
            timestamp,
            signals,
            motion,
        })
    }
}

impl AvroRecord for ContextEvent {
    const NAME: &'static str = "ContextEvent";
    const AVSC: &'static str = contract::CONTEXT_EVENT_AVSC;

    fn schema() -> &'static Schema {
        schema_once!(Self::AVSC, "context_event.avsc")
    }

    fn encode(&self) -> Result<Vec<u8>, SchemaError> {
        let mut buf = Vec::with_capacity(4096);
        fast::context_event(self, &mut buf);
        Ok(buf)
    }

    fn decode(body: &[u8]) -> Result<Self, SchemaError> {
        fast_read::context_event(body).map_err(|problem| SchemaError::shape(Self::NAME, "<body>", problem))
    }

    fn to_wire(&self, schema_id: u32) -> Result<Vec<u8>, SchemaError> {
        let mut buf = Vec::with_capacity(4096);
        wire::write_header(schema_id, &mut buf);
        fast::context_event(self, &mut buf);
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
        fast::motion_window(self, &mut buf);
        Ok(buf)
    }

    fn to_wire(&self, schema_id: u32) -> Result<Vec<u8>, SchemaError> {
        let mut buf = Vec::with_capacity(133 + 24 * self.accelerometer.x.len());
        wire::write_header(schema_id, &mut buf);
        fast::motion_window(self, &mut buf);
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

/// Decodes a body of the current schema through `apache_avro`'s generic
/// reader (the value tree), the reference the fast readers are tested against.
pub fn decode_generic<T: AvroRecord>(body: &[u8]) -> Result<T, SchemaError> {
    decode_body(body, T::schema(), None)
}

/// Avro binary of `record` through `apache_avro`'s generic writer (the value
/// tree), the reference the fast writers are tested against.
pub fn encode_generic<T: AvroRecord>(record: &T) -> Result<Vec<u8>, SchemaError> {
    apache_avro::to_avro_datum(T::schema(), record.to_value()).map_err(|e| avro_err("encoding", T::NAME, e))
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
