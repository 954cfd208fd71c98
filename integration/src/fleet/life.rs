//! One simulated iPhone's life: facts fixed at install, signals that move as
//! a phone's do, and motion windows taken from labelled recordings.
//!
//! Real context data compresses because most of it barely changes: the
//! device model, screen and locale are fixed for an install; battery drains
//! slowly; a setting flips now and then between sessions; within a session
//! a reading wanders a little around where it was. The generator follows
//! that shape, so that ClickHouse's bytes per event measured with the fleet
//! say something about real data:
//!
//! - **fixed per install**: device facts, SDK version, locale and time zone,
//!   free-text signals, which signals the device reports at all (about 97 %),
//!   the base value of every number;
//! - **per session**: each number drifts slowly around its base (5 % of its
//!   range over many sessions), a flag flips with probability 5 %, an
//!   enumeration changes with probability 10 %;
//! - **per event**: small noise (0.2 % of the range), numbers quantized to a
//!   thousandth of their range as sensors report them; battery drains and
//!   charges, counters climb, local time follows the capture time;
//! - **motion**: a share of events carries one labelled recording (10 Hz,
//!   10 s of accelerometer and gyroscope) whose label is kept, so a tag can
//!   be compared with it.

use std::collections::BTreeMap;

use context_schemas::sample::SampleRng;
use context_schemas::{
    catalog, Axes3, ContextEvent, DeviceFacts, Motion, Sdk, SignalKind, SignalSpec, SignalValue, Signals,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Device time between two events of a session.
pub const EVENT_SPACING_US: i64 = 10_000_000;

/// A labelled motion recording an event can carry.
#[derive(Debug, Clone)]
pub struct Recording {
    pub label: String,
    pub rate_hz: f64,
    pub accelerometer: Axes3,
    pub gyroscope: Axes3,
}

/// Reads the labelled recordings as `enrich-activity train` does: a folder
/// of phone recordings (`enrich-activity/data/hapt/train`, cut into 10 s
/// windows, one every 10 s), or a `.ts`, `.csv` or `.jsonl` file (`.ts`
/// series at 10 Hz).
pub fn recordings(path: &std::path::Path) -> anyhow::Result<Vec<Recording>> {
    let cut = enrich_activity::dataset::Cut {
        seconds: vec![10.0],
        hop_seconds: 10.0,
        transitions: false,
    };
    let windows = enrich_activity::dataset::read_with(path, 10.0, &cut).map_err(anyhow::Error::msg)?;
    Ok(windows
        .into_iter()
        .map(|w| Recording {
            label: w.label,
            rate_hz: w.rate_hz,
            accelerometer: w.accelerometer,
            gyroscope: w.gyroscope,
        })
        .collect())
}

/// (locale, language, region, currency, time zone, UTC offset in minutes)
const LOCALES: &[(&str, &str, &str, &str, &str, i64)] = &[
    ("en_US", "en", "US", "USD", "America/New_York", -300),
    ("en_GB", "en", "GB", "GBP", "Europe/London", 0),
    ("de_DE", "de", "DE", "EUR", "Europe/Berlin", 60),
    ("fr_FR", "fr", "FR", "EUR", "Europe/Paris", 60),
    ("ja_JP", "ja", "JP", "JPY", "Asia/Tokyo", 540),
    ("pt_BR", "pt", "BR", "BRL", "America/Sao_Paulo", -180),
];
const MODELS: &[&str] = &[
    "iPhone15,2",
    "iPhone15,4",
    "iPhone14,5",
    "iPhone16,1",
    "iPhone16,2",
    "iPhone17,3",
];
const OS_VERSIONS: &[&str] = &["17.4", "17.5.1", "17.6", "18.0", "18.1"];
const SDK_VERSIONS: &[&str] = &["4.2.0", "4.2.0", "4.2.0", "4.1.3"];
const SCREENS: &[&str] = &["Home", "Feed", "Detail", "Search", "Settings", "Profile", "Checkout"];

/// What a simulated install keeps across sessions and across restarts of the
/// simulator (saved as `device.json` in its folder).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Install {
    pub install_id: Uuid,
    pub seed: u64,
    pub model: String,
    pub os_version: String,
    pub sdk_version: String,
    pub locale: usize,
    /// Device clock minus true time, µs (most phones are within a second;
    /// a few are minutes off).
    pub clock_skew_us: i64,
    /// Sessions made so far.
    pub sessions: u64,
    /// Events made so far.
    pub events: u64,
    pub battery: f64,
    pub steps_today: i64,
}

impl Install {
    /// A new install drawn from `seed`.
    pub fn new(seed: u64) -> Install {
        let mut rng = SampleRng::new(seed);
        let clock_skew_us = if rng.unit() < 0.05 {
            (rng.range(-600.0, 600.0) * 1e6) as i64
        } else {
            (rng.range(-1.0, 1.0) * 1e6) as i64
        };
        Install {
            install_id: rng.uuid(),
            seed,
            model: rng.pick(MODELS).to_string(),
            os_version: rng.pick(OS_VERSIONS).to_string(),
            sdk_version: rng.pick(SDK_VERSIONS).to_string(),
            locale: (rng.next_u64() % LOCALES.len() as u64) as usize,
            clock_skew_us,
            sessions: 0,
            events: 0,
            battery: rng.range(0.4, 1.0),
            steps_today: (rng.range(0.0, 4000.0)) as i64,
        }
    }

    /// The device's clock at true time `now_us`.
    pub fn device_time(&self, now_us: i64) -> i64 {
        now_us + self.clock_skew_us
    }

    /// A rng for one purpose of this install (signal index, session…).
    fn rng(&self, salt: u64) -> SampleRng {
        SampleRng::new(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    /// The next session: `events` events whose capture times end at the
    /// device time of `now_us`, a share `motion_share` of them with a
    /// recording. Returns the events and, per event, the recording's label.
    pub fn session(
        &mut self,
        now_us: i64,
        events: usize,
        motion_share: f64,
        recordings: &[Recording],
    ) -> (Vec<ContextEvent>, Vec<Option<String>>) {
        self.sessions += 1;
        let session = self.sessions;
        let mut rng = self.rng(1 << 40 | session);
        let session_id = rng.uuid();
        let batch_id = rng.uuid();
        let end = self.device_time(now_us);
        let mut out = Vec::with_capacity(events);
        let mut labels = Vec::with_capacity(events);
        let moves: Vec<SessionValue> = catalog()
            .signals
            .iter()
            .map(|s| self.session_value(s, session))
            .collect();
        let locale = LOCALES[self.locale % LOCALES.len()];
        for i in 0..events {
            self.events += 1;
            let client_timestamp = end - (events - 1 - i) as i64 * EVENT_SPACING_US;
            self.battery -= rng.range(0.0005, 0.002);
            let charging = self.battery < 0.08;
            if charging {
                self.battery = 1.0;
            }
            self.steps_today += (rng.range(0.0, 30.0)) as i64;
            let local = time::OffsetDateTime::from_unix_timestamp(client_timestamp / 1_000_000 + locale.5 * 60)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let mut signals = Signals::default();
            for (spec, value) in catalog().signals.iter().zip(&moves) {
                let special = match spec.name.as_str() {
                    "battery_level" => Some(SignalValue::Double(round(self.battery, 0.01))),
                    "is_charging" => Some(SignalValue::Boolean(charging)),
                    "battery_state" => Some(SignalValue::String(
                        if charging { "charging" } else { "unplugged" }.into(),
                    )),
                    "session_event_index" => Some(SignalValue::Long(i as i64)),
                    "session_duration_s" => Some(SignalValue::Double((i as i64 * EVENT_SPACING_US / 1_000_000) as f64)),
                    "sessions_total" => Some(SignalValue::Long(session as i64)),
                    "steps_today" => Some(SignalValue::Long(self.steps_today)),
                    "local_hour" => Some(SignalValue::Long(local.hour() as i64)),
                    "local_minute" => Some(SignalValue::Long(local.minute() as i64)),
                    "day_of_week" => Some(SignalValue::Long(local.weekday().number_from_monday() as i64)),
                    "day_of_month" => Some(SignalValue::Long(local.day() as i64)),
                    "month" => Some(SignalValue::Long(local.month() as i64)),
                    "is_weekend" => Some(SignalValue::Boolean(local.weekday().number_from_monday() >= 6)),
                    "screen_name" => Some(SignalValue::String(rng.pick(SCREENS).to_string())),
                    _ => None,
                };
                let v = match (special, value) {
                    (_, SessionValue::Absent) => continue,
                    (Some(v), _) => v,
                    (None, SessionValue::Number { value, noise, step }) => {
                        let (lo, hi) = (spec.min.unwrap_or(f64::MIN), spec.max.unwrap_or(f64::MAX));
                        let v = value + rng.range(-noise, *noise);
                        match spec.kind {
                            SignalKind::Long => SignalValue::Long(v.clamp(lo, hi).round() as i64),
                            _ => SignalValue::Double(round(v, *step).clamp(lo, hi)),
                        }
                    }
                    (None, SessionValue::Fixed(v)) => v.clone(),
                };
                signals
                    .set_at(spec, v)
                    .expect("simulated values have the catalogue's types");
            }
            let label = (!recordings.is_empty() && rng.unit() < motion_share).then(|| rng.pick(recordings).clone());
            labels.push(label.as_ref().map(|r| r.label.clone()));
            let motion = label.map(|r| Motion {
                sample_rate_hz: r.rate_hz,
                accelerometer: r.accelerometer,
                gyroscope: r.gyroscope,
            });
            out.push(ContextEvent {
                event_id: rng.uuid(),
                batch_id,
                app_id: String::new(),
                session_id,
                install_id: self.install_id,
                sdk: Sdk {
                    name: "context-ios".into(),
                    version: self.sdk_version.clone(),
                },
                device: DeviceFacts {
                    model: self.model.clone(),
                    os_name: "iOS".into(),
                    os_version: self.os_version.clone(),
                    extra: BTreeMap::from([
                        ("storage_class".to_owned(), "256GB".to_owned()),
                        ("locale".to_owned(), locale.0.to_owned()),
                    ]),
                },
                client_timestamp,
                sent_at: end,
                received_at: now_us,
                timestamp: now_us - (events - 1 - i) as i64 * EVENT_SPACING_US,
                time_suspect: false,
                signals,
                motion,
            });
        }
        (out, labels)
    }

    /// Where `spec` stands in session number `session`.
    fn session_value(&self, spec: &SignalSpec, session: u64) -> SessionValue {
        let mut fixed = self.rng(spec.index as u64);
        if fixed.unit() > 0.97 {
            return SessionValue::Absent;
        }
        let mut now = self.rng((session << 16) ^ spec.index as u64 ^ 1 << 63);
        let locale = LOCALES[self.locale % LOCALES.len()];
        let text = |s: &str| SessionValue::Fixed(SignalValue::String(s.to_owned()));
        match spec.kind {
            SignalKind::Double | SignalKind::Long => {
                let (lo, hi) = (spec.min.unwrap_or(0.0), spec.max.unwrap_or(100.0));
                let span = hi - lo;
                // Most readings sit in the lower part of a wide range.
                let base = lo + span * fixed.unit().powi(3);
                let phase = fixed.range(0.0, std::f64::consts::TAU);
                let drift = span * 0.05 * (session as f64 * 0.3 + phase).sin();
                match spec.name.as_str() {
                    "timezone_offset_minutes" => SessionValue::Fixed(SignalValue::Long(locale.5)),
                    _ => SessionValue::Number {
                        value: (base + drift).clamp(lo, hi),
                        noise: span * 0.002,
                        step: span / 1000.0,
                    },
                }
            }
            SignalKind::Boolean => {
                let base = fixed.unit() < 0.2;
                SessionValue::Fixed(SignalValue::Boolean(base ^ (now.unit() < 0.05)))
            }
            SignalKind::String => match (&spec.allowed, spec.name.as_str()) {
                (Some(allowed), _) => {
                    let base = fixed.pick(allowed).clone();
                    let v = if now.unit() < 0.1 {
                        now.pick(allowed).clone()
                    } else {
                        base
                    };
                    SessionValue::Fixed(SignalValue::String(v))
                }
                (None, "locale_identifier") => text(locale.0),
                (None, "language_code" | "preferred_language") => text(locale.1),
                (None, "region_code") => text(locale.2),
                (None, "currency_code") => text(locale.3),
                (None, "timezone_identifier") => text(locale.4),
                (None, "calendar_identifier") => text("gregorian"),
                (None, "app_version") => text("3.12.0"),
                (None, "app_build") => text("3120"),
                (None, _) => {
                    let len = spec.max_length.unwrap_or(16).min(10);
                    SessionValue::Fixed(SignalValue::String(
                        (0..len)
                            .map(|_| (b'a' + (fixed.next_u64() % 26) as u8) as char)
                            .collect(),
                    ))
                }
            },
        }
    }
}

enum SessionValue {
    Absent,
    Fixed(SignalValue),
    Number { value: f64, noise: f64, step: f64 },
}

fn round(v: f64, step: f64) -> f64 {
    if step > 0.0 {
        (v / step).round() * step
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording(label: &str) -> Recording {
        Recording {
            label: label.into(),
            rate_hz: 10.0,
            accelerometer: Axes3::from_samples(&[[0.0, -1.0, 0.0]; 100]),
            gyroscope: Axes3::from_samples(&[[0.0, 0.1, 0.0]; 100]),
        }
    }

    #[test]
    fn an_install_keeps_its_facts_and_its_signals_move_slowly() {
        let mut phone = Install::new(7);
        let now = 1_790_000_000_000_000;
        let (a, _) = phone.session(now, 5, 0.0, &[]);
        let (b, _) = phone.session(now + 600_000_000, 5, 0.0, &[]);
        assert!(a
            .iter()
            .chain(&b)
            .all(|e| e.install_id == phone.install_id && e.device.model == phone.model));
        assert_ne!(a[0].session_id, b[0].session_id);
        assert!(a
            .iter()
            .all(|e| e.session_id == a[0].session_id && e.batch_id == a[0].batch_id));
        // About 170 signals, nearly all of them set.
        assert!(a[0].signals.count_set() > catalog().signals.len() * 9 / 10);
        let battery = |e: &ContextEvent| match e.signals.get("battery_level") {
            Some(SignalValue::Double(v)) => *v,
            other => panic!("battery_level {other:?}"),
        };
        assert!((battery(&a[0]) - battery(&b[4])).abs() < 0.1, "battery jumps");
        // Capture times are spaced and end at the device's now.
        assert_eq!(a[4].client_timestamp, phone.device_time(now));
        assert_eq!(a[4].client_timestamp - a[3].client_timestamp, EVENT_SPACING_US);
        // Every value is within the documented range.
        for e in a.iter().chain(&b) {
            for (spec, v) in e.signals.iter() {
                if let Some(SignalValue::Double(d)) = v {
                    assert!(
                        spec.min.unwrap_or(f64::MIN) <= *d && *d <= spec.max.unwrap_or(f64::MAX),
                        "{}",
                        spec.name
                    );
                }
                if let Some(SignalValue::Long(l)) = v {
                    let l = *l as f64;
                    assert!(
                        spec.min.unwrap_or(f64::MIN) <= l && l <= spec.max.unwrap_or(f64::MAX),
                        "{}",
                        spec.name
                    );
                }
            }
        }
    }

    #[test]
    fn motion_events_carry_a_recording_and_its_label() {
        let mut phone = Install::new(8);
        let recs = [recording("Walking"), recording("Running")];
        let (events, labels) = phone.session(1_790_000_000_000_000, 200, 0.5, &recs);
        let with = labels.iter().filter(|l| l.is_some()).count();
        assert!((50..150).contains(&with), "{with} of 200 carry motion");
        for (e, l) in events.iter().zip(&labels) {
            assert_eq!(e.motion.is_some(), l.is_some());
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_install() {
        assert_eq!(Install::new(3), Install::new(3));
        assert_ne!(Install::new(3).install_id, Install::new(4).install_id);
    }
}
