//! Avro binary writers for the hot path: the gateway encodes every event, so
//! `ContextEvent` is written straight into bytes instead of through an
//! `apache_avro` value tree. A property test checks that both produce the
//! same bytes.

use uuid::Uuid;

use crate::event::{Axes3, ContextEvent, SignalValue};
use crate::records::MotionWindow;

fn long(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn string(buf: &mut Vec<u8>, s: &str) {
    long(buf, s.len() as i64);
    buf.extend_from_slice(s.as_bytes());
}

fn uuid(buf: &mut Vec<u8>, u: &Uuid) {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    string(buf, u.hyphenated().encode_lower(&mut text));
}

fn floats(buf: &mut Vec<u8>, values: &[f32]) {
    if !values.is_empty() {
        long(buf, values.len() as i64);
        buf.reserve(values.len() * 4);
        for v in values {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    long(buf, 0);
}

fn axes(buf: &mut Vec<u8>, a: &Axes3) {
    floats(buf, &a.x);
    floats(buf, &a.y);
    floats(buf, &a.z);
}

pub(super) fn motion_window(w: &MotionWindow, buf: &mut Vec<u8>) {
    uuid(buf, &w.event_id);
    string(buf, &w.app_id);
    uuid(buf, &w.session_id);
    uuid(buf, &w.install_id);
    long(buf, w.timestamp);
    buf.extend_from_slice(&w.sample_rate_hz.to_le_bytes());
    axes(buf, &w.accelerometer);
    axes(buf, &w.gyroscope);
}

pub(super) fn context_event(e: &ContextEvent, buf: &mut Vec<u8>) {
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
    buf.push(u8::from(e.time_suspect));
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
