//! The smaller records of the contract: `MotionWindow`, `ActivityTag`, `DeadLetter`.

use uuid::Uuid;

use crate::event::{Axes3, ContextEvent, Motion};

/// The motion samples of one event, routed to `context.motion.v1`.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionWindow {
    pub event_id: Uuid,
    pub app_id: String,
    pub session_id: Uuid,
    pub install_id: Uuid,
    /// Skew-corrected capture time, microseconds since the epoch.
    pub timestamp: i64,
    pub sample_rate_hz: f64,
    pub accelerometer: Axes3,
    pub gyroscope: Axes3,
}

impl MotionWindow {
    /// The motion window of an event, if the event carries motion samples.
    pub fn from_event(event: &ContextEvent) -> Option<Self> {
        let Motion {
            sample_rate_hz,
            accelerometer,
            gyroscope,
        } = event.motion.as_ref()?;
        Some(MotionWindow {
            event_id: event.event_id,
            app_id: event.app_id.clone(),
            session_id: event.session_id,
            install_id: event.install_id,
            timestamp: event.timestamp,
            sample_rate_hz: *sample_rate_hz,
            accelerometer: accelerometer.clone(),
            gyroscope: gyroscope.clone(),
        })
    }
}

/// The probability a model gave one class.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassProbability {
    pub label: String,
    pub probability: f32,
}

/// The activity a model version inferred for one motion window.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityTag {
    pub event_id: Uuid,
    pub app_id: String,
    pub session_id: Uuid,
    pub install_id: Uuid,
    pub timestamp: i64,
    pub model_version: String,
    pub activity: String,
    pub confidence: f32,
    pub probabilities: Vec<ClassProbability>,
    /// When the tag was made, microseconds since the epoch.
    pub tagged_at: i64,
    /// Why the activity is `unknown`; `None` for a tag with a class.
    pub reason: Option<String>,
}

/// Why and where a record was given up on, with its original bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub source: String,
    pub reason: String,
    pub detail: String,
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub app_id: Option<String>,
    pub event_id: Option<String>,
    pub failed_at: i64,
    pub payload: Vec<u8>,
}
