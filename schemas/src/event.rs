//! `ContextEvent`: one context snapshot, the value of `context.events.v1`.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::catalog::{catalog, SignalKind, SignalSpec};
use crate::error::SchemaError;

/// One event as stored in Kafka. Times are microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextEvent {
    pub event_id: Uuid,
    pub batch_id: Uuid,
    /// From the API key, never from the request body.
    pub app_id: String,
    pub session_id: Uuid,
    pub install_id: Uuid,
    pub sdk: Sdk,
    pub device: DeviceFacts,
    /// Device clock time of capture, as sent.
    pub client_timestamp: i64,
    /// Device clock time when the request was sent.
    pub sent_at: i64,
    /// Gateway clock time when the request arrived.
    pub received_at: i64,
    /// Skew-corrected capture time: `client_timestamp + (received_at - sent_at)`.
    pub timestamp: i64,
    /// The corrected time lies outside the gateway's plausible window
    /// (`max_future` ahead, `max_age` behind): stored, but doubtful.
    pub time_suspect: bool,
    pub signals: Signals,
    pub motion: Option<Motion>,
}

impl ContextEvent {
    /// The skew-corrected capture time for the given device and server times.
    pub fn corrected_timestamp(client_timestamp: i64, sent_at: i64, received_at: i64) -> i64 {
        client_timestamp.saturating_add(received_at.saturating_sub(sent_at))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdk {
    pub name: String,
    pub version: String,
}

/// Static facts of the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFacts {
    pub model: String,
    pub os_name: String,
    pub os_version: String,
    /// Further static facts by name, as the SDK sent them.
    pub extra: BTreeMap<String, String>,
}

/// Raw motion samples of both sensors at one sample rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Motion {
    pub sample_rate_hz: f64,
    /// Acceleration in g.
    pub accelerometer: Axes3,
    /// Rotation rate in rad/s.
    pub gyroscope: Axes3,
}

/// Samples of a three-axis sensor, one vector per axis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Axes3 {
    pub x: Vec<f32>,
    pub y: Vec<f32>,
    pub z: Vec<f32>,
}

impl Axes3 {
    /// Builds the axes from `[x, y, z]` samples.
    pub fn from_samples(samples: &[[f32; 3]]) -> Self {
        let mut axes = Axes3::default();
        for [x, y, z] in samples {
            axes.x.push(*x);
            axes.y.push(*y);
            axes.z.push(*z);
        }
        axes
    }

    /// Number of samples, when all axes agree on it.
    pub fn len(&self) -> Option<usize> {
        (self.x.len() == self.y.len() && self.y.len() == self.z.len()).then_some(self.x.len())
    }

    /// True when no axis holds a sample.
    pub fn is_empty(&self) -> bool {
        self.x.is_empty() && self.y.is_empty() && self.z.is_empty()
    }
}

/// The value of one signal.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalValue {
    Double(f64),
    Long(i64),
    Boolean(bool),
    String(String),
}

impl SignalValue {
    pub fn kind(&self) -> SignalKind {
        match self {
            SignalValue::Double(_) => SignalKind::Double,
            SignalValue::Long(_) => SignalKind::Long,
            SignalValue::Boolean(_) => SignalKind::Boolean,
            SignalValue::String(_) => SignalKind::String,
        }
    }
}

/// The signals of one event, one optional slot per catalogue entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Signals {
    values: Vec<Option<SignalValue>>,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            values: vec![None; catalog().len()],
        }
    }
}

impl Signals {
    /// The value of the signal called `name`, if it is set.
    pub fn get(&self, name: &str) -> Option<&SignalValue> {
        catalog().get(name).and_then(|s| self.values[s.index].as_ref())
    }

    /// The value at a catalogue index.
    pub fn at(&self, index: usize) -> Option<&SignalValue> {
        self.values.get(index).and_then(Option::as_ref)
    }

    /// Sets a signal, checking that the name exists and the type matches.
    pub fn set(&mut self, name: &str, value: SignalValue) -> Result<(), SchemaError> {
        let spec = catalog()
            .get(name)
            .ok_or_else(|| SchemaError::UnknownSignal(name.to_owned()))?;
        self.set_at(spec, value)
    }

    /// Sets the signal described by `spec`, checking the type.
    pub fn set_at(&mut self, spec: &SignalSpec, value: SignalValue) -> Result<(), SchemaError> {
        if value.kind() != spec.kind {
            return Err(SchemaError::SignalType {
                name: spec.name.clone(),
                expected: spec.kind.avro_name(),
                got: value.kind().avro_name(),
            });
        }
        self.values[spec.index] = Some(value);
        Ok(())
    }

    /// Clears a signal.
    pub fn clear(&mut self, index: usize) {
        if let Some(slot) = self.values.get_mut(index) {
            *slot = None;
        }
    }

    /// All catalogue slots in schema order, with the spec of each.
    pub fn iter(&self) -> impl Iterator<Item = (&'static SignalSpec, Option<&SignalValue>)> {
        catalog().signals.iter().zip(self.values.iter().map(Option::as_ref))
    }

    /// The slots in catalogue order, for consumers that move values out.
    pub fn into_values(self) -> Vec<Option<SignalValue>> {
        self.values
    }

    /// How many signals are set.
    pub fn count_set(&self) -> usize {
        self.values.iter().filter(|v| v.is_some()).count()
    }
}
