//! Validation and normalisation of one event: envelope fields, UUIDs,
//! timestamps with clock-skew correction, every signal against its Avro type
//! and documented range, motion samples against the limits.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use context_schemas::catalog::{catalog, SignalKind, SignalSpec};
use context_schemas::{Axes3, ContextEvent, DeviceFacts, Motion, Sdk, SignalValue, Signals};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::batch::RawBatch;
use crate::config::Limits;
use crate::error::BatchError;

/// Longest piece of client input quoted in an answer (an `event_id` of the
/// `rejected` list, a value quoted in a `detail` or an error message), in
/// bytes: longer ones are cut and end in [`ELLIPSIS`]. A valid UUID, in any
/// of its spellings (at most 45 bytes), is never cut.
pub const MAX_QUOTED_BYTES: usize = 64;
/// Longest `detail` of a rejected event, in bytes, whatever it quotes (a
/// parser's message may quote input too): longer ones end in [`ELLIPSIS`].
pub const MAX_DETAIL_BYTES: usize = 512;
/// Longest `message` of an error answer (400, 413…), in bytes: a parser's
/// message may quote the body; a longer one ends in [`ELLIPSIS`].
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// What ends a text cut by [`clip`].
pub const ELLIPSIS: &str = "…";

/// `text` in at most `max` bytes: unchanged when it fits, else its first
/// characters followed by [`ELLIPSIS`] (the marker counted in `max`). An
/// answer quotes client input only through this, so what the gateway
/// echoes (and keeps in its dedup memory) does not grow with the input.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut cut = max.saturating_sub(ELLIPSIS.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + ELLIPSIS.len());
    out.push_str(&text[..cut]);
    if max >= ELLIPSIS.len() {
        out.push_str(ELLIPSIS);
    }
    Cow::Owned(out)
}

/// Why one event was rejected: a stable reason code and a human detail of
/// at most [`MAX_DETAIL_BYTES`].
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

impl Rejection {
    /// A rejection; a `detail` over [`MAX_DETAIL_BYTES`] is cut ([`clip`]).
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        let detail: String = detail.into();
        let detail = if detail.len() > MAX_DETAIL_BYTES {
            clip(&detail, MAX_DETAIL_BYTES).into_owned()
        } else {
            detail
        };
        Rejection { reason, detail }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// What the batch shares with each of its events, already checked.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub app_id: String,
    pub batch_id: Uuid,
    pub session_id: Uuid,
    pub install_id: Uuid,
    pub sdk: Sdk,
    pub device: DeviceFacts,
    /// Device clock when sent, µs since the epoch: the request's `X-Sent-At`
    /// header when it has one (the time of this attempt), else the body's
    /// `sent_at` (the time the body was built).
    pub sent_at: i64,
    /// Server clock when received, µs since the epoch.
    pub received_at: i64,
}

fn parse_uuid(field: &str, s: &str) -> Result<Uuid, String> {
    Uuid::parse_str(s).map_err(|e| format!("{field} `{}` is not a UUID: {e}", clip(s, MAX_QUOTED_BYTES)))
}

/// Parses an RFC 3339 time into µs since the epoch; the error quotes at
/// most [`MAX_QUOTED_BYTES`] of `s`.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| format!("`{}` is not an RFC 3339 time: {e}", clip(s, MAX_QUOTED_BYTES)))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000)
        .map_err(|_| format!("`{}` is out of range", clip(s, MAX_QUOTED_BYTES)))
}

fn fact_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl Envelope {
    /// This envelope as a batch's JSON without its events: what a dead
    /// letter keeps so that its event can be submitted again as it came.
    pub fn to_json(&self) -> String {
        let mut device = serde_json::json!({
            "install_id": self.install_id.to_string(),
            "model": self.device.model,
            "os_name": self.device.os_name,
            "os_version": self.device.os_version,
        });
        for (k, v) in &self.device.extra {
            device[k] = serde_json::Value::String(v.clone());
        }
        serde_json::json!({
            "batch_id": self.batch_id.to_string(),
            "sent_at": context_runtime::clock::rfc3339(self.sent_at),
            "session_id": self.session_id.to_string(),
            "sdk": {"name": self.sdk.name, "version": self.sdk.version},
            "device": device,
        })
        .to_string()
    }

    /// Checks the envelope of a parsed batch; a bad envelope makes the whole
    /// request "not a batch" (400).
    pub fn from_batch(
        batch: &RawBatch<'_>,
        app_id: &str,
        received_at: i64,
        sent_at_header: Option<i64>,
    ) -> Result<Self, BatchError> {
        let bad = BatchError::NotABatch;
        check_envelope_size(batch)?;
        Ok(Envelope {
            app_id: app_id.to_owned(),
            batch_id: parse_uuid("batch_id", &batch.batch_id).map_err(bad)?,
            session_id: parse_uuid("session_id", &batch.session_id).map_err(bad)?,
            install_id: parse_uuid("device.install_id", &batch.device.install_id).map_err(bad)?,
            sdk: Sdk {
                name: batch.sdk.name.clone().into_owned(),
                version: batch.sdk.version.clone().into_owned(),
            },
            device: DeviceFacts {
                model: batch.device.model.clone().into_owned(),
                os_name: batch.device.os_name.as_deref().unwrap_or("iOS").to_owned(),
                os_version: batch.device.os_version.clone().into_owned(),
                extra: batch
                    .device
                    .extra
                    .iter()
                    .map(|(k, v)| (k.clone(), fact_text(v)))
                    .collect::<BTreeMap<_, _>>(),
            },
            sent_at: match sent_at_header {
                Some(t) => t,
                None => parse_time(&batch.sent_at).map_err(|e| bad(format!("sent_at: {e}")))?,
            },
            received_at,
        })
    }
}

/// Longest text of an envelope field (`sdk.*`, `device.*`, a device fact's
/// name or value), in bytes. The envelope is copied into every event of the
/// batch, so its size multiplies by the event count.
pub const ENVELOPE_TEXT_MAX: usize = 256;
/// Most further device facts (`device.*` beyond the named ones).
pub const ENVELOPE_FACTS_MAX: usize = 32;

/// Refuses an envelope over [`ENVELOPE_TEXT_MAX`] or [`ENVELOPE_FACTS_MAX`]
/// (413, naming the field): with them, the envelope copied into each event is
/// at most about 17 KB, whatever the body holds.
fn check_envelope_size(batch: &RawBatch<'_>) -> Result<(), BatchError> {
    let too_long = |field: &str, len: usize| {
        BatchError::TooLarge(format!(
            "envelope field `{field}` is {len} bytes; at most {ENVELOPE_TEXT_MAX} are allowed"
        ))
    };
    let d = &batch.device;
    for (field, text) in [
        ("sdk.name", batch.sdk.name.as_ref()),
        ("sdk.version", batch.sdk.version.as_ref()),
        ("device.model", d.model.as_ref()),
        ("device.os_name", d.os_name.as_deref().unwrap_or_default()),
        ("device.os_version", d.os_version.as_ref()),
    ] {
        if text.len() > ENVELOPE_TEXT_MAX {
            return Err(too_long(field, text.len()));
        }
    }
    if d.extra.len() > ENVELOPE_FACTS_MAX {
        return Err(BatchError::TooLarge(format!(
            "`device` has {} further facts; at most {ENVELOPE_FACTS_MAX} are allowed",
            d.extra.len()
        )));
    }
    for (name, value) in &d.extra {
        if name.len() > ENVELOPE_TEXT_MAX {
            return Err(too_long("device.<fact name>", name.len()));
        }
        let len = fact_text(value).len();
        if len > ENVELOPE_TEXT_MAX {
            return Err(too_long(&format!("device.{name}"), len));
        }
    }
    Ok(())
}

/// A JSON scalar as sent for a signal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
}

impl Scalar<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "boolean",
            Scalar::Int(_) => "integer",
            Scalar::Float(_) => "number",
            Scalar::Str(_) => "string",
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, string, boolean or null")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Scalar::Float(v as f64), Scalar::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Float(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `signals` object, checked entry by entry in the order sent as it is
/// read: a record of fixed size whatever the object holds (an object of a
/// million tiny entries costs no more memory than one of three), the count
/// of names no catalogue knows, and the first entry's error, if any.
#[derive(Debug, Default)]
pub(crate) struct CheckedSignals {
    pub signals: Signals,
    pub unknown: usize,
    pub first_error: Option<Rejection>,
}

impl CheckedSignals {
    /// Checks one entry; an explicit null leaves the signal as it is.
    pub fn add(&mut self, name: &str, value: Scalar<'_>) {
        let Some(spec) = catalog().get(name) else {
            self.unknown += 1;
            return;
        };
        if self.first_error.is_some() {
            return;
        }
        match signal_value(spec, value) {
            Ok(Some(v)) => self.signals.set_at(spec, v).expect("types were checked"),
            Ok(None) => {}
            Err(rejection) => self.first_error = Some(rejection),
        }
    }
}

/// One event as read from JSON, before any check of its values: what both
/// readers produce, serde's ([`Validator::event`]) and the one-pass reader
/// of [`crate::onepass`], so that one piece of code validates for both.
#[derive(Debug)]
pub(crate) struct EventParts<'a, M> {
    pub event_id: Cow<'a, str>,
    pub timestamp: Cow<'a, str>,
    pub signals: CheckedSignals,
    pub motion: Option<M>,
    /// Fields of the event and of its motion that no catalogue knows.
    pub unknown_fields: usize,
}

/// An event's `motion` as a reader left it: its rate, and its sample arrays
/// read (or still to be read) into axes.
pub(crate) trait MotionParts {
    fn sample_rate_hz(&self) -> f64;
    /// The accelerometer's and the gyroscope's axes, at most `max` samples
    /// each; the error names the array.
    fn axes(self, max: usize) -> Result<(Axes3, Axes3), Rejection>;
}

impl<'de> Deserialize<'de> for CheckedSignals {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CheckedSignals;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of signal names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = CheckedSignals::default();
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    let value = map
                        .next_value::<Scalar<'de>>()
                        .map_err(|e| de::Error::custom(format!("signal `{}`: {e}", clip(&name, MAX_QUOTED_BYTES))))?;
                    out.add(&name, value);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Motion as sent. The sample arrays stay raw JSON and are read by
/// [`parse_samples`]: they are most of an event's bytes, and parsing them
/// straight into `f32` axes is several times faster than a generic number path.
/// Fields a newer SDK adds are skipped and counted, never a reject.
#[derive(Debug)]
struct RawMotion<'a> {
    sample_rate_hz: f64,
    accelerometer: Option<&'a RawValue>,
    gyroscope: Option<&'a RawValue>,
    unknown_fields: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawMotion<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMotion<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a motion object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut rate, mut accelerometer, mut gyroscope, mut unknown_fields) = (None, None, None, 0);
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "sample_rate_hz" => once(&mut rate, map.next_value()?, "sample_rate_hz")?,
                        "accelerometer" => once(&mut accelerometer, map.next_value()?, "accelerometer")?,
                        "gyroscope" => once(&mut gyroscope, map.next_value()?, "gyroscope")?,
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                            unknown_fields += 1;
                        }
                    }
                }
                Ok(RawMotion {
                    sample_rate_hz: rate.ok_or_else(|| de::Error::missing_field("sample_rate_hz"))?,
                    accelerometer: accelerometer.flatten(),
                    gyroscope: gyroscope.flatten(),
                    unknown_fields,
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl MotionParts for RawMotion<'_> {
    fn sample_rate_hz(&self) -> f64 {
        self.sample_rate_hz
    }

    fn axes(self, max: usize) -> Result<(Axes3, Axes3), Rejection> {
        let axes = |name: &str, raw: Option<&RawValue>| match raw {
            None => Ok(Axes3::default()),
            Some(raw) => {
                parse_samples(raw.get(), max).map_err(|e| Rejection::new("invalid_motion", format!("{name}: {e}")))
            }
        };
        Ok((
            axes("accelerometer", self.accelerometer)?,
            axes("gyroscope", self.gyroscope)?,
        ))
    }
}

/// Sets a field read from a JSON object, refusing a second occurrence.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

/// Reads `[[x, y, z], ...]` into three axes, refusing more than `max`
/// samples, anything but three numbers per sample, and non-finite values.
pub fn parse_samples(json: &str, max: usize) -> Result<Axes3, String> {
    let bytes = json.as_bytes();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && matches!(bytes[*i], b' ' | b'\n' | b'\r' | b'\t') {
            *i += 1;
        }
    };
    let expect = |i: &mut usize, c: u8| -> Result<(), String> {
        skip_ws(i);
        if bytes.get(*i) == Some(&c) {
            *i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, *i))
        }
    };
    let number = |i: &mut usize| -> Result<f32, String> {
        skip_ws(i);
        let start = *i;
        while *i < bytes.len() && matches!(bytes[*i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
            *i += 1;
        }
        let text = &json[start..*i];
        match text.parse::<f32>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(format!("`{text}` at byte {start} is not a finite number")),
        }
    };
    let mut axes = Axes3::default();
    expect(&mut i, b'[')?;
    skip_ws(&mut i);
    if bytes.get(i) == Some(&b']') {
        i += 1;
    } else {
        loop {
            if axes.x.len() == max {
                return Err(format!("more than {max} samples"));
            }
            expect(&mut i, b'[')?;
            axes.x.push(number(&mut i)?);
            expect(&mut i, b',')?;
            axes.y.push(number(&mut i)?);
            expect(&mut i, b',')?;
            axes.z.push(number(&mut i)?);
            expect(&mut i, b']')?;
            skip_ws(&mut i);
            match bytes.get(i) {
                Some(b',') => i += 1,
                Some(b']') => {
                    i += 1;
                    break;
                }
                _ => return Err(format!("expected `,` or `]` at byte {i}")),
            }
        }
    }
    skip_ws(&mut i);
    if i != bytes.len() {
        return Err(format!("unexpected text after the samples at byte {i}"));
    }
    Ok(axes)
}

/// One event as sent; fields a newer SDK adds are skipped and counted.
#[derive(Debug)]
struct RawEvent<'a> {
    event_id: Cow<'a, str>,
    timestamp: Cow<'a, str>,
    signals: CheckedSignals,
    motion: Option<RawMotion<'a>>,
    unknown_fields: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawEvent<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawEvent<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut event_id, mut timestamp, mut signals, mut motion) = (None, None, None, None);
                let mut unknown_fields = 0;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    match key.as_ref() {
                        "event_id" => once(&mut event_id, map.next_value::<BorrowedText<'de>>()?.0, "event_id")?,
                        "timestamp" => once(&mut timestamp, map.next_value::<BorrowedText<'de>>()?.0, "timestamp")?,
                        "signals" => once(&mut signals, map.next_value()?, "signals")?,
                        "motion" => once(&mut motion, map.next_value::<Option<RawMotion<'de>>>()?, "motion")?,
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                            unknown_fields += 1;
                        }
                    }
                }
                let motion = motion.flatten();
                Ok(RawEvent {
                    event_id: event_id.ok_or_else(|| de::Error::missing_field("event_id"))?,
                    timestamp: timestamp.ok_or_else(|| de::Error::missing_field("timestamp"))?,
                    signals: signals.unwrap_or_default(),
                    unknown_fields: unknown_fields + motion.as_ref().map_or(0, |m| m.unknown_fields),
                    motion,
                })
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON string, borrowed from the input when it has no escapes.
struct BorrowedText<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BorrowedText<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedText(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedText(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Motion sample rates an iPhone produces: Core Motion's `CMMotionManager`
/// delivers up to 100 Hz and `CMBatchedSensorManager` up to 800 Hz; below
/// 1 Hz a sample is no motion window. Anything else is refused.
pub const MOTION_RATE_HZ: std::ops::RangeInclusive<f64> = 1.0..=800.0;

/// The units and convention the API takes motion in, Core Motion's: the
/// accelerometer in g *with* gravity (`CMAccelerometerData`: a phone at rest
/// reads |a| ≈ 1 g; Android's m/s² are divided by 9.80665 and negated), the
/// gyroscope in rad/s (`CMGyroData`). The sign cannot be told from a window
/// (a turned phone looks the same), so it is documented, not checked, and the
/// activity model does not depend on it.
///
/// The units are checked on the median magnitude of a window's samples, which
/// a gait's peaks do not move: a median accelerometer outside
/// [`ACCEL_MEDIAN_G`] is m/s² (9.8 at rest), milli-g, or acceleration without
/// gravity (`CMDeviceMotion.userAcceleration`, or a sensor that reads
/// nothing); a median gyroscope over [`GYRO_MEDIAN_MAX_RAD_S`] (about 2000 °/s,
/// an iPhone gyroscope's full range) is degrees per second. Such an event is
/// refused as `implausible_motion` (dead-lettered with its bytes, like every
/// reject): stored, it would be tagged with activities it does not show.
pub const ACCEL_MEDIAN_G: std::ops::RangeInclusive<f32> = 0.2..=4.0;
/// See [`ACCEL_MEDIAN_G`].
pub const GYRO_MEDIAN_MAX_RAD_S: f32 = 35.0;

/// The median of the samples' magnitudes; `None` without samples.
fn median_magnitude(a: &context_schemas::Axes3) -> Option<f32> {
    let n = a.x.len().min(a.y.len()).min(a.z.len());
    if n == 0 {
        return None;
    }
    let mut m: Vec<f32> = (0..n)
        .map(|i| (a.x[i] * a.x[i] + a.y[i] * a.y[i] + a.z[i] * a.z[i]).sqrt())
        .collect();
    let (_, mid, _) = m.select_nth_unstable_by(n / 2, f32::total_cmp);
    Some(*mid)
}

/// Refuses motion whose units are not the API's ([`ACCEL_MEDIAN_G`]).
fn plausible_units(
    accelerometer: &context_schemas::Axes3,
    gyroscope: &context_schemas::Axes3,
) -> Result<(), Rejection> {
    let implausible = |detail: String| Rejection::new("implausible_motion", detail);
    if let Some(m) = median_magnitude(accelerometer) {
        if m > *ACCEL_MEDIAN_G.end() {
            return Err(implausible(format!(
                "accelerometer: median |a| is {m:.3}, over {} g: send g, not m/s² (divide by 9.80665)",
                ACCEL_MEDIAN_G.end()
            )));
        }
        if m < *ACCEL_MEDIAN_G.start() {
            return Err(implausible(format!(
                "accelerometer: median |a| is {m:.3}, under {} g: send acceleration in g with gravity \
                 (CMAccelerometerData, or CMDeviceMotion's gravity + userAcceleration), not linear acceleration \
                 or milli-g; a sensor that reads nothing reads 0",
                ACCEL_MEDIAN_G.start()
            )));
        }
    }
    if let Some(m) = median_magnitude(gyroscope) {
        if m > GYRO_MEDIAN_MAX_RAD_S {
            return Err(implausible(format!(
                "gyroscope: median |ω| is {m:.1}, over {GYRO_MEDIAN_MAX_RAD_S} rad/s: send rad/s, not degrees per second"
            )));
        }
    }
    Ok(())
}

/// Checks events against the catalogue and the limits.
#[derive(Debug, Clone)]
pub struct Validator {
    pub limits: Limits,
    max_future_us: i64,
    max_age_us: i64,
}

/// A valid event, how many of its signals were unknown (and dropped), and
/// how many fields of the event or its motion no catalogue knows (skipped).
#[derive(Debug)]
pub struct Valid {
    pub event: ContextEvent,
    pub unknown_signals: usize,
    pub unknown_fields: usize,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Validator {
    pub fn new(limits: Limits, max_future: Duration, max_age: Duration) -> Self {
        Validator {
            limits,
            max_future_us: micros(max_future),
            max_age_us: micros(max_age),
        }
    }

    /// The event id as sent, when it can be read, for the `rejected` list
    /// and the dead letter's `dl.event_id`: at most [`MAX_QUOTED_BYTES`]
    /// ([`clip`]; a UUID is never cut).
    pub fn event_id_of(raw: &RawValue) -> Option<String> {
        #[derive(Deserialize)]
        struct Id<'a> {
            #[serde(borrow)]
            event_id: Option<Cow<'a, str>>,
        }
        serde_json::from_str::<Id<'_>>(raw.get())
            .ok()
            .and_then(|i| i.event_id.map(|id| clip(&id, MAX_QUOTED_BYTES).into_owned()))
    }

    /// Validates and normalises one event of a batch.
    pub fn event(&self, env: &Envelope, raw: &RawValue) -> Result<Valid, Rejection> {
        let ev: RawEvent<'_> =
            serde_json::from_str(raw.get()).map_err(|e| Rejection::new("malformed_event", e.to_string()))?;
        self.finish(
            env,
            EventParts {
                event_id: ev.event_id,
                timestamp: ev.timestamp,
                signals: ev.signals,
                motion: ev.motion,
                unknown_fields: ev.unknown_fields,
            },
        )
    }

    /// Checks an event's parts, whichever reader read them, and builds the
    /// event with the batch's envelope.
    pub(crate) fn finish<M: MotionParts>(&self, env: &Envelope, ev: EventParts<'_, M>) -> Result<Valid, Rejection> {
        let event_id = parse_uuid("event_id", &ev.event_id).map_err(|e| Rejection::new("invalid_event_id", e))?;
        let client_timestamp = parse_time(&ev.timestamp).map_err(|e| Rejection::new("invalid_timestamp", e))?;
        let timestamp = ContextEvent::corrected_timestamp(client_timestamp, env.sent_at, env.received_at);
        // No event is refused for its time: one outside the plausible window
        // is stored with its raw times and flagged.
        let time_suspect = timestamp.saturating_sub(env.received_at) > self.max_future_us
            || env.received_at.saturating_sub(timestamp) > self.max_age_us;
        let CheckedSignals {
            signals,
            unknown: unknown_signals,
            first_error,
        } = ev.signals;
        if let Some(rejection) = first_error {
            return Err(rejection);
        }
        let motion = ev.motion.map(|m| self.motion(m)).transpose()?;
        Ok(Valid {
            event: ContextEvent {
                event_id,
                batch_id: env.batch_id,
                app_id: env.app_id.clone(),
                session_id: env.session_id,
                install_id: env.install_id,
                sdk: env.sdk.clone(),
                device: env.device.clone(),
                client_timestamp,
                sent_at: env.sent_at,
                received_at: env.received_at,
                timestamp,
                time_suspect,
                signals,
                motion,
            },
            unknown_signals,
            unknown_fields: ev.unknown_fields,
        })
    }

    fn motion(&self, m: impl MotionParts) -> Result<Motion, Rejection> {
        let sample_rate_hz = m.sample_rate_hz();
        if !MOTION_RATE_HZ.contains(&sample_rate_hz) {
            return Err(Rejection::new(
                "invalid_motion",
                format!(
                    "sample_rate_hz {} is outside {}–{} Hz, the rates iPhones sample motion at",
                    sample_rate_hz,
                    MOTION_RATE_HZ.start(),
                    MOTION_RATE_HZ.end()
                ),
            ));
        }
        let (accelerometer, gyroscope) = m.axes(self.limits.max_samples)?;
        plausible_units(&accelerometer, &gyroscope)?;
        Ok(Motion {
            sample_rate_hz,
            accelerometer,
            gyroscope,
        })
    }
}

/// Checks one signal value against its spec; `None` for an explicit null.
fn signal_value(spec: &SignalSpec, value: Scalar<'_>) -> Result<Option<SignalValue>, Rejection> {
    let wrong = |v: &Scalar<'_>| {
        Rejection::new(
            "invalid_signal",
            format!("signal `{}` must be a {}, got {}", spec.name, spec.kind, v.kind()),
        )
    };
    let in_range = |x: f64| {
        let (min, max) = (spec.min.unwrap_or(f64::MIN), spec.max.unwrap_or(f64::MAX));
        if x.is_finite() && x >= min && x <= max {
            Ok(())
        } else {
            Err(Rejection::new(
                "signal_out_of_range",
                format!("signal `{}` = {x} is outside {min}..={max} ({})", spec.name, spec.unit),
            ))
        }
    };
    let v = match (spec.kind, value) {
        (_, Scalar::Null) => return Ok(None),
        (SignalKind::Double, Scalar::Float(f)) => {
            in_range(f)?;
            SignalValue::Double(f)
        }
        (SignalKind::Double, Scalar::Int(i)) => {
            in_range(i as f64)?;
            SignalValue::Double(i as f64)
        }
        (SignalKind::Long, Scalar::Int(i)) => {
            in_range(i as f64)?;
            SignalValue::Long(i)
        }
        (SignalKind::Long, Scalar::Float(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            in_range(f)?;
            SignalValue::Long(f as i64)
        }
        (SignalKind::Boolean, Scalar::Bool(b)) => SignalValue::Boolean(b),
        (SignalKind::String, Scalar::Str(s)) => {
            if let Some(allowed) = &spec.allowed {
                if !allowed.iter().any(|a| a == s.as_ref()) {
                    return Err(Rejection::new(
                        "signal_not_allowed",
                        format!(
                            "signal `{}` = `{}` is not one of {}",
                            spec.name,
                            clip(&s, MAX_QUOTED_BYTES),
                            allowed.join(", ")
                        ),
                    ));
                }
            }
            if let Some(max) = spec.max_length {
                if s.len() > max {
                    return Err(Rejection::new(
                        "signal_too_long",
                        format!("signal `{}` is {} bytes, over {max}", spec.name, s.len()),
                    ));
                }
            }
            SignalValue::String(s.into_owned())
        }
        (_, other) => return Err(wrong(&other)),
    };
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::parse_batch;

    const RECEIVED: i64 = 1_760_000_100_000_000; // 2025-10-09T08:55:00Z

    fn envelope() -> Envelope {
        let json = r#"{"batch_id":"5d0f0cfb-3a26-4c4e-9f5c-7d0c0c2b1a11","sent_at":"2025-10-09T08:54:30Z",
            "sdk":{"name":"context-ios","version":"4.2.0"},
            "device":{"install_id":"0f7e5c1a-8b9d-4c3e-a2f1-6d5b4a3c2e10","model":"iPhone15,2","os_version":"17.4","storage":256},
            "session_id":"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d","events":[]}"#;
        let batch = parse_batch(json.as_bytes(), &Limits::default()).unwrap();
        Envelope::from_batch(&batch, "app-1", RECEIVED, None).unwrap()
    }

    fn validator() -> Validator {
        Validator::new(
            Limits::default(),
            Duration::from_secs(3600),
            Duration::from_secs(30 * 86400),
        )
    }

    fn event(signals: &str, timestamp: &str) -> Box<RawValue> {
        RawValue::from_string(format!(
            r#"{{"event_id":"3f2504e0-4f89-41d3-9a0c-0305e82c3301","timestamp":"{timestamp}","signals":{{{signals}}},
            "motion":{{"sample_rate_hz":50,"accelerometer":[[0.1,-0.9,0.2],[0.0,-1.0,0.1]],"gyroscope":[[0,0.1,0]]}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_valid_event_is_normalised_with_skew_correction() {
        let env = envelope();
        assert_eq!(env.device.extra["storage"], "256");
        let raw = event(
            r#""battery_level":0.83,"screen_brightness":1,"low_power_mode":false,"network_type":"wifi","steps_today":1200,"from_a_newer_sdk":7,"local_hour":null"#,
            "2025-10-09T08:54:00Z",
        );
        let valid = validator().event(&env, &raw).unwrap();
        let e = valid.event;
        assert_eq!(valid.unknown_signals, 1);
        // The device clock ran 30 s behind: sent 08:54:30 device time, received 08:55:00.
        assert_eq!(e.client_timestamp, RECEIVED - 60_000_000);
        assert_eq!(e.timestamp, RECEIVED - 30_000_000);
        assert_eq!(e.signals.get("battery_level"), Some(&SignalValue::Double(0.83)));
        assert_eq!(e.signals.get("screen_brightness"), Some(&SignalValue::Double(1.0)));
        assert_eq!(e.signals.get("steps_today"), Some(&SignalValue::Long(1200)));
        assert_eq!(e.signals.get("local_hour"), None);
        assert_eq!(e.signals.count_set(), 5);
        assert_eq!(e.motion.unwrap().accelerometer.y, vec![-0.9, -1.0]);
        assert_eq!(e.app_id, "app-1");
    }

    #[test]
    fn a_newer_sdks_fields_are_skipped_and_counted() {
        let raw = RawValue::from_string(
            r#"{"event_id":"3f2504e0-4f89-41d3-9a0c-0305e82c3301","timestamp":"2025-10-09T08:54:00Z",
            "capture_reason":{"kind":"timer","n":[1,2]},"signals":{"battery_level":0.5},
            "motion":{"sample_rate_hz":50,"accelerometer":[[0.1,-0.9,0.2]],"magnetometer":[[1,2,3]],"clock":"x"},
            "priority":3}"#
                .into(),
        )
        .unwrap();
        let valid = validator().event(&envelope(), &raw).unwrap();
        assert_eq!(valid.unknown_fields, 4);
        assert_eq!(valid.event.motion.unwrap().accelerometer.x, vec![0.1]);
        // Duplicates and missing required fields are still malformed.
        let dup = RawValue::from_string(
            r#"{"event_id":"3f2504e0-4f89-41d3-9a0c-0305e82c3301","event_id":"x","timestamp":"2025-10-09T08:54:00Z"}"#
                .into(),
        )
        .unwrap();
        assert_eq!(
            validator().event(&envelope(), &dup).unwrap_err().reason,
            "malformed_event"
        );
        let missing = RawValue::from_string(r#"{"event_id":"3f2504e0-4f89-41d3-9a0c-0305e82c3301"}"#.into()).unwrap();
        assert_eq!(
            validator().event(&envelope(), &missing).unwrap_err().reason,
            "malformed_event"
        );
    }

    #[test]
    fn a_huge_signals_object_is_checked_as_it_is_read() {
        // 50,000 entries no catalogue knows and a known one sent twice:
        // counted and dropped as read, the later value kept.
        let mut entries: Vec<String> = (0..50_000).map(|i| format!(r#""u{i}":0"#)).collect();
        entries.push(r#""battery_level":0.1"#.into());
        entries.push(r#""battery_level":0.2"#.into());
        let raw = event(&entries.join(","), "2025-10-09T08:54:30Z");
        let valid = validator().event(&envelope(), &raw).unwrap();
        assert_eq!(valid.unknown_signals, 50_000);
        assert_eq!(
            valid.event.signals.get("battery_level"),
            Some(&SignalValue::Double(0.2))
        );
        // The first bad entry is the reason, even with good ones after it.
        let raw = event(
            r#""battery_level":7,"screen_brightness":9,"steps_today":1"#,
            "2025-10-09T08:54:30Z",
        );
        let err = validator().event(&envelope(), &raw).unwrap_err();
        assert!(err.detail.contains("battery_level"), "{}", err.detail);
    }

    #[test]
    fn bad_events_get_a_reason() {
        let (env, v) = (envelope(), validator());
        let reason = |signals: &str, ts: &str| v.event(&env, &event(signals, ts)).unwrap_err().reason;
        let now = "2025-10-09T08:54:30Z";
        assert_eq!(reason(r#""battery_level":"full""#, now), "invalid_signal");
        assert_eq!(reason(r#""battery_level":1.5"#, now), "signal_out_of_range");
        assert_eq!(reason(r#""steps_today":1.5"#, now), "invalid_signal");
        assert_eq!(reason(r#""network_type":"carrier-pigeon""#, now), "signal_not_allowed");
        let long = format!(r#""locale_identifier":"{}""#, "x".repeat(65));
        assert_eq!(reason(&long, now), "signal_too_long");
        assert_eq!(reason(r#""battery_level":[1]"#, now), "malformed_event");
        assert_eq!(reason("", "yesterday"), "invalid_timestamp");
        // Times far off are stored, flagged, never refused.
        let suspect = |ts: &str| v.event(&env, &event("", ts)).unwrap().event.time_suspect;
        assert!(suspect("2025-10-09T12:00:00Z"), "hours ahead of the server");
        assert!(suspect("2025-01-01T00:00:00Z"), "months behind the server");
        assert!(suspect("1970-01-01T00:00:00Z"), "a reset clock");
        assert!(!suspect(now));
        let bad_id = RawValue::from_string(r#"{"event_id":"nope","timestamp":"2025-10-09T08:54:30Z"}"#.into()).unwrap();
        assert_eq!(v.event(&env, &bad_id).unwrap_err().reason, "invalid_event_id");
        assert_eq!(Validator::event_id_of(&bad_id).as_deref(), Some("nope"));
        let bad_motion = RawValue::from_string(
            r#"{"event_id":"3f2504e0-4f89-41d3-9a0c-0305e82c3301","timestamp":"2025-10-09T08:54:30Z","motion":{"sample_rate_hz":0}}"#
                .into(),
        )
        .unwrap();
        assert_eq!(v.event(&env, &bad_motion).unwrap_err().reason, "invalid_motion");
        // Rates no iPhone produces: a billionth of a hertz, or 5 kHz.
        for rate in ["1e-9", "0.5", "5000"] {
            let raw = RawValue::from_string(format!(
                r#"{{"event_id":"3f2504e0-4f89-41d3-9a0c-0305e82c3301","timestamp":"2025-10-09T08:54:30Z","motion":{{"sample_rate_hz":{rate},"accelerometer":[[0,0,1],[0,0,1]]}}}}"#
            ))
            .unwrap();
            let err = v.event(&env, &raw).unwrap_err();
            assert_eq!(err.reason, "invalid_motion", "{rate}");
            assert!(err.detail.contains("1–800 Hz"), "{}", err.detail);
        }
    }

    /// Motion in other units than the API's is refused with what to send
    /// instead; a walk's peaks, a phone turned any way or Android's sign are
    /// not.
    #[test]
    fn motion_in_other_units_is_refused_and_says_which() {
        let v = Validator::new(
            Limits::default(),
            Duration::from_secs(86_400),
            Duration::from_secs(86_400 * 30),
        );
        let env = envelope();
        let motion = |acc: &str, gyr: &str| {
            RawValue::from_string(format!(
                r#"{{"event_id":"3f2504e0-4f89-41d3-9a0c-0305e82c3301","timestamp":"2025-10-09T08:54:30Z","motion":{{"sample_rate_hz":50,"accelerometer":{acc},"gyroscope":{gyr}}}}}"#
            ))
            .unwrap()
        };
        let repeat = |sample: &str, n: usize| format!("[{}]", vec![sample; n].join(","));
        let still = repeat("[0.01,-0.99,0.05]", 50);
        let gyr = repeat("[0.1,-0.2,0.05]", 50);
        // A walk: peaks of 3 g in a third of the samples; turned, negated (Android's sign).
        let walk = format!(
            "[{},{}]",
            vec!["[0.2,-3.1,0.4]"; 17].join(","),
            vec!["[0.1,-0.8,0.3]"; 33].join(",")
        );
        for (acc, gyr) in [
            (&still, &gyr),
            (&walk, &gyr),
            (&repeat("[0.7,0,-0.7]", 50), &gyr),
            (&repeat("[0,0.99,0]", 50), &repeat("[-3,2,1]", 50)),
        ] {
            v.event(&env, &motion(acc, gyr)).expect("plausible motion is taken");
        }
        let refused = |acc: &str, gyr: &str| v.event(&env, &motion(acc, gyr)).unwrap_err();
        let e = refused(&repeat("[0.1,-9.79,0.4]", 50), &gyr);
        assert_eq!(e.reason, "implausible_motion");
        assert!(e.detail.contains("not m/s²"), "{}", e.detail);
        let e = refused(&repeat("[0.01,0.02,-0.03]", 50), &gyr);
        assert_eq!(e.reason, "implausible_motion");
        assert!(e.detail.contains("with gravity"), "{}", e.detail);
        assert_eq!(
            refused(&repeat("[0,0,0]", 50), &gyr).reason,
            "implausible_motion",
            "a sensor that reads nothing"
        );
        let e = refused(&still, &repeat("[40,-60,10]", 50));
        assert_eq!(e.reason, "implausible_motion");
        assert!(e.detail.contains("degrees per second"), "{}", e.detail);
        // Without samples (a device without a gyroscope) nothing is judged.
        v.event(&env, &motion(&still, "[]")).expect("no gyroscope samples");
    }

    #[test]
    fn samples_parse_into_axes_and_refuse_the_rest() {
        let a = parse_samples(" [ [0.5, -1, 2e-3] ,[1,2,3]] ", 10).unwrap();
        assert_eq!((a.x, a.y, a.z), (vec![0.5, 1.0], vec![-1.0, 2.0], vec![0.002, 3.0]));
        assert_eq!(parse_samples("[]", 10).unwrap().len(), Some(0));
        for bad in [
            "[[1,2]]",
            "[[1,2,3,4]]",
            "[[1,2,3]",
            "[[1,2,\"x\"]]",
            "[[1e99,0,0]]",
            "{}",
            "[[1,2,3]] x",
        ] {
            assert!(parse_samples(bad, 10).is_err(), "{bad}");
        }
        assert!(parse_samples("[[1,2,3],[1,2,3]]", 1)
            .unwrap_err()
            .contains("more than 1"));
    }

    #[test]
    fn bad_envelopes_are_not_a_batch() {
        let json = r#"{"batch_id":"x","sent_at":"2025-10-09T08:54:30Z","sdk":{"name":"n","version":"v"},
            "device":{"install_id":"0f7e5c1a-8b9d-4c3e-a2f1-6d5b4a3c2e10","model":"m","os_version":"1"},
            "session_id":"9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d","events":[]}"#;
        let batch = parse_batch(json.as_bytes(), &Limits::default()).unwrap();
        let err = Envelope::from_batch(&batch, "a", RECEIVED, None).unwrap_err();
        assert!(err.to_string().contains("batch_id"), "{err}");
    }

    #[test]
    fn quoted_input_is_clipped_on_a_character_boundary() {
        assert_eq!(clip("short", MAX_QUOTED_BYTES), "short");
        let id = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
        assert_eq!(
            clip(&format!("urn:uuid:{id}"), MAX_QUOTED_BYTES).len(),
            45,
            "a UUID is never cut"
        );
        let accented = "é".repeat(100);
        let cut = clip(&accented, 10);
        assert!(cut.len() <= 10 && cut.ends_with(ELLIPSIS), "{cut}");
        assert_eq!(cut, format!("ééé{ELLIPSIS}"));
        // An event_id of 100 KB and a timestamp of 100 KB: the detail and
        // the id quote a few dozen bytes of them.
        let (env, v) = (envelope(), validator());
        let huge = "x".repeat(100_000);
        let raw =
            RawValue::from_string(format!(r#"{{"event_id":"{huge}","timestamp":"2025-10-09T08:54:30Z"}}"#)).unwrap();
        let id = Validator::event_id_of(&raw).unwrap();
        assert!(id.len() <= MAX_QUOTED_BYTES && id.ends_with(ELLIPSIS), "{id}");
        let err = v.event(&env, &raw).unwrap_err();
        assert_eq!(err.reason, "invalid_event_id");
        assert!(err.detail.len() < 2 * MAX_QUOTED_BYTES + 100, "{}", err.detail);
        let err = v.event(&env, &event("", &huge)).unwrap_err();
        assert_eq!(err.reason, "invalid_timestamp");
        assert!(err.detail.len() < 2 * MAX_QUOTED_BYTES + 100, "{}", err.detail);
        // Whatever a detail quotes, it stays within its bound.
        let long = Rejection::new("malformed_event", "y".repeat(10_000));
        assert!(long.detail.len() <= MAX_DETAIL_BYTES && long.detail.ends_with(ELLIPSIS));
    }
}
