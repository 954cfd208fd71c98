//! Deterministic, realistic sample events for tests, benches and simulators.
//!
//! Every signal of the catalogue gets a value inside its documented range (or
//! one of its allowed values), so samples pass validation and exercise the
//! full width of the contract.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::catalog::{catalog, SignalKind, SignalSpec};
use crate::event::{Axes3, ContextEvent, DeviceFacts, Motion, Sdk, SignalValue, Signals};

/// A tiny deterministic generator (SplitMix64), so samples need no RNG crate.
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    pub fn new(seed: u64) -> Self {
        SampleRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    pub fn uuid(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(
            ((u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())).to_be_bytes(),
        )
        .into_uuid()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next_u64() % items.len() as u64) as usize]
    }
}

/// A value for `spec` within its documented range.
pub fn signal_value(spec: &SignalSpec, rng: &mut SampleRng) -> SignalValue {
    match spec.kind {
        SignalKind::Double => SignalValue::Double(rng.range(spec.min.unwrap_or(0.0), spec.max.unwrap_or(1.0))),
        SignalKind::Long => {
            let (lo, hi) = (spec.min.unwrap_or(0.0) as i64, spec.max.unwrap_or(100.0) as i64);
            SignalValue::Long(lo + (rng.next_u64() % (hi - lo + 1) as u64) as i64)
        }
        SignalKind::Boolean => SignalValue::Boolean(rng.next_u64() & 1 == 1),
        SignalKind::String => match &spec.allowed {
            Some(allowed) => SignalValue::String(rng.pick(allowed).clone()),
            None => {
                let len = spec.max_length.unwrap_or(16).min(12);
                SignalValue::String((0..len).map(|_| (b'a' + (rng.next_u64() % 26) as u8) as char).collect())
            }
        },
    }
}

/// Three-axis samples: gravity plus a periodic component and noise.
pub fn axes(
    rng: &mut SampleRng,
    samples: usize,
    rate_hz: f64,
    freq_hz: f64,
    amplitude: f64,
    gravity: [f64; 3],
) -> Axes3 {
    let mut out = Axes3::default();
    let phase = rng.range(0.0, std::f64::consts::TAU);
    for i in 0..samples {
        let t = i as f64 / rate_hz;
        let wave = amplitude * (std::f64::consts::TAU * freq_hz * t + phase).sin();
        out.x.push((gravity[0] + wave * 0.3 + rng.range(-0.02, 0.02)) as f32);
        out.y.push((gravity[1] + wave + rng.range(-0.02, 0.02)) as f32);
        out.z.push((gravity[2] + wave * 0.5 + rng.range(-0.02, 0.02)) as f32);
    }
    out
}

/// Options for [`event`].
#[derive(Debug, Clone)]
pub struct SampleOptions {
    pub app_id: String,
    /// Capture time, microseconds since the epoch.
    pub timestamp: i64,
    /// Motion seconds at `rate_hz`; 0 for an event without motion.
    pub motion_seconds: f64,
    pub rate_hz: f64,
    /// Fraction of catalogue signals that are set (1.0 = all).
    pub signal_fill: f64,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            app_id: "demo-app".into(),
            timestamp: 1_760_000_000_000_000,
            motion_seconds: 2.0,
            rate_hz: 50.0,
            signal_fill: 1.0,
        }
    }
}

/// A realistic event drawn from `seed`.
pub fn event(seed: u64, opts: &SampleOptions) -> ContextEvent {
    let mut rng = SampleRng::new(seed);
    let mut signals = Signals::default();
    for spec in &catalog().signals {
        if rng.unit() < opts.signal_fill {
            signals
                .set_at(spec, signal_value(spec, &mut rng))
                .expect("sample values have the catalogue's types");
        }
    }
    let samples = (opts.motion_seconds * opts.rate_hz).round() as usize;
    let motion = (samples > 0).then(|| {
        let freq = rng.range(0.5, 3.0);
        Motion {
            sample_rate_hz: opts.rate_hz,
            accelerometer: axes(&mut rng, samples, opts.rate_hz, freq, 0.4, [0.0, -1.0, 0.0]),
            gyroscope: axes(&mut rng, samples, opts.rate_hz, freq, 0.8, [0.0, 0.0, 0.0]),
        }
    });
    let skew = (rng.range(-30.0, 30.0) * 1e6) as i64;
    let sent_at = opts.timestamp + 5_000_000 + skew;
    let received_at = opts.timestamp + 5_200_000;
    let client_timestamp = opts.timestamp + skew;
    ContextEvent {
        event_id: rng.uuid(),
        batch_id: rng.uuid(),
        app_id: opts.app_id.clone(),
        session_id: rng.uuid(),
        install_id: rng.uuid(),
        sdk: Sdk {
            name: "context-ios".into(),
            version: "4.2.0".into(),
        },
        device: DeviceFacts {
            model: rng
                .pick(&["iPhone15,2", "iPhone14,5", "iPhone16,1", "iPad13,4"])
                .to_string(),
            os_name: "iOS".into(),
            os_version: rng.pick(&["17.4", "17.5.1", "18.0"]).to_string(),
            extra: BTreeMap::from([("storage_class".to_owned(), "256GB".to_owned())]),
        },
        client_timestamp,
        sent_at,
        received_at,
        timestamp: ContextEvent::corrected_timestamp(client_timestamp, sent_at, received_at),
        time_suspect: false,
        signals,
        motion,
    }
}

/// The largest realistic event: every signal set, long strings, 10 s of
/// motion at 100 Hz.
pub fn largest_event(seed: u64) -> ContextEvent {
    let mut e = event(
        seed,
        &SampleOptions {
            motion_seconds: 10.0,
            rate_hz: 100.0,
            ..SampleOptions::default()
        },
    );
    for spec in &catalog().signals {
        if let (SignalKind::String, None, Some(len)) = (spec.kind, &spec.allowed, spec.max_length) {
            e.signals
                .set_at(spec, SignalValue::String("x".repeat(len)))
                .expect("string signal");
        }
    }
    e
}

/// The `ContextEvent` schema text after `edit` changed its signal groups
/// (each a record field of `signals`): how tests build older and newer
/// versions of the contract.
pub fn edit_signal_groups(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> String {
    let mut json: serde_json::Value =
        serde_json::from_str(crate::contract::CONTEXT_EVENT_AVSC).expect("the embedded schema is JSON");
    let signals = json["fields"]
        .as_array_mut()
        .and_then(|f| f.iter_mut().find(|f| f["name"] == "signals"))
        .expect("ContextEvent has signals");
    let groups = signals["type"]["fields"].as_array_mut().expect("signals has groups");
    edit(groups);
    json.to_string()
}

/// The contract as it was before `signal` existed.
pub fn schema_without_signal(signal: &str) -> String {
    edit_signal_groups(|groups| {
        for group in groups {
            if let Some(fields) = group["type"]["fields"].as_array_mut() {
                fields.retain(|f| f["name"] != signal);
            }
        }
    })
}

/// The Avro value of `event` as a writer of [`schema_without_signal`] makes
/// it: the same, without the field of `signal`.
pub fn value_without_signal(event: &ContextEvent, signal: &str) -> apache_avro::types::Value {
    use apache_avro::types::Value;
    let mut value = crate::AvroRecord::to_value(event);
    if let Value::Record(fields) = &mut value {
        for (name, v) in fields.iter_mut() {
            if let (true, Value::Record(groups)) = (name == "signals", v) {
                for (_, group) in groups.iter_mut() {
                    if let Value::Record(signals) = group {
                        signals.retain(|(k, _)| k != signal);
                    }
                }
            }
        }
    }
    value
}
