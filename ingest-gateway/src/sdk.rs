//! Request bodies as the iOS SDK sends them, built from [`ContextEvent`]s:
//! used by the tests, the benchmarks and the simulated device fleet.

use context_schemas::{ContextEvent, SignalValue};
use serde_json::{json, Map, Value};

/// RFC 3339 text of a time in µs since the epoch.
pub use context_runtime::clock::rfc3339;

/// The JSON of one event as the SDK sends it (device time, no server fields).
pub fn event_json(e: &ContextEvent) -> Value {
    let mut signals = Map::new();
    for (spec, value) in e.signals.iter() {
        if let Some(v) = value {
            let v = match v {
                SignalValue::Double(d) => json!(d),
                SignalValue::Long(l) => json!(l),
                SignalValue::Boolean(b) => json!(b),
                SignalValue::String(s) => json!(s),
            };
            signals.insert(spec.name.clone(), v);
        }
    }
    let mut event = json!({
        "event_id": e.event_id.to_string(),
        "timestamp": rfc3339(e.client_timestamp),
        "signals": signals,
    });
    if let Some(m) = &e.motion {
        let samples = |a: &context_schemas::Axes3| -> Vec<[f32; 3]> {
            (0..a.x.len()).map(|i| [a.x[i], a.y[i], a.z[i]]).collect()
        };
        event["motion"] = json!({
            "sample_rate_hz": m.sample_rate_hz,
            "accelerometer": samples(&m.accelerometer),
            "gyroscope": samples(&m.gyroscope),
        });
    }
    event
}

/// A batch body for `events`, which must share one session (the envelope is
/// taken from the first event; `sent_at` is given in device time).
pub fn batch_json(events: &[ContextEvent], sent_at: i64) -> Value {
    let first = events.first().expect("a batch has at least one event");
    let mut device = json!({
        "install_id": first.install_id.to_string(),
        "model": first.device.model,
        "os_name": first.device.os_name,
        "os_version": first.device.os_version,
    });
    for (k, v) in &first.device.extra {
        device[k] = json!(v);
    }
    json!({
        "batch_id": first.batch_id.to_string(),
        "sent_at": rfc3339(sent_at),
        "sdk": {"name": first.sdk.name, "version": first.sdk.version},
        "device": device,
        "session_id": first.session_id.to_string(),
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
    })
}

/// Makes `events` one session's batch: the envelope ids of the first event
/// copied onto all of them, capture times one second apart ending at `now`.
pub fn as_session(mut events: Vec<ContextEvent>, now: i64) -> Vec<ContextEvent> {
    let Some(first) = events.first().cloned() else {
        return events;
    };
    let n = events.len() as i64;
    for (i, e) in events.iter_mut().enumerate() {
        e.batch_id = first.batch_id;
        e.session_id = first.session_id;
        e.install_id = first.install_id;
        e.sdk = first.sdk.clone();
        e.device = first.device.clone();
        e.app_id = first.app_id.clone();
        e.client_timestamp = now - (n - i as i64) * 1_000_000;
    }
    events
}
