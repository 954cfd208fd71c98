//! Lossless round trips of every record type through Avro and the wire format.

use apache_avro::Schema;
use context_schemas::codec::decode_wire;
use context_schemas::sample::{self, SampleOptions};
use context_schemas::{
    catalog, wire, ActivityTag, AvroRecord, Axes3, ClassProbability, ContextEvent, DeadLetter, DeviceFacts, Motion,
    MotionWindow, Sdk, SignalKind, SignalValue, Signals,
};
use proptest::prelude::*;
use uuid::Uuid;

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

fn finite() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::ZERO | prop::num::f64::SUBNORMAL
}

fn axes3() -> impl Strategy<Value = Axes3> {
    (0usize..120).prop_flat_map(|n| {
        let v = || prop::collection::vec(any::<f32>().prop_filter("comparable", |f| !f.is_nan()), n);
        (v(), v(), v()).prop_map(|(x, y, z)| Axes3 { x, y, z })
    })
}

fn signals() -> impl Strategy<Value = Signals> {
    let n = catalog().len();
    prop::collection::vec((any::<bool>(), finite(), any::<i64>(), any::<bool>(), text()), n).prop_map(|slots| {
        let mut signals = Signals::default();
        for (spec, (set, d, l, b, s)) in catalog().signals.iter().zip(slots) {
            if !set {
                continue;
            }
            let value = match spec.kind {
                SignalKind::Double => SignalValue::Double(d),
                SignalKind::Long => SignalValue::Long(l),
                SignalKind::Boolean => SignalValue::Boolean(b),
                SignalKind::String => SignalValue::String(s),
            };
            signals.set_at(spec, value).unwrap();
        }
        signals
    })
}

prop_compose! {
    fn context_event()(
        ids in (uuid(), uuid(), uuid(), uuid()),
        app_id in text(),
        sdk in (text(), text()),
        device in (text(), text(), text(), prop::collection::btree_map(text(), text(), 0..4)),
        times in (any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>(), any::<bool>()),
        signals in signals(),
        motion in prop::option::of((finite(), axes3(), axes3())),
    ) -> ContextEvent {
        ContextEvent {
            event_id: ids.0, batch_id: ids.1, session_id: ids.2, install_id: ids.3,
            app_id,
            sdk: Sdk { name: sdk.0, version: sdk.1 },
            device: DeviceFacts { model: device.0, os_name: device.1, os_version: device.2, extra: device.3 },
            client_timestamp: times.0, sent_at: times.1, received_at: times.2, timestamp: times.3, time_suspect: times.4,
            signals,
            motion: motion.map(|(sample_rate_hz, accelerometer, gyroscope)| Motion { sample_rate_hz, accelerometer, gyroscope }),
        }
    }
}

prop_compose! {
    fn motion_window()(ids in (uuid(), uuid(), uuid()), app_id in text(), timestamp in any::<i64>(),
        sample_rate_hz in finite(), accelerometer in axes3(), gyroscope in axes3()) -> MotionWindow {
        MotionWindow { event_id: ids.0, session_id: ids.1, install_id: ids.2, app_id, timestamp, sample_rate_hz, accelerometer, gyroscope }
    }
}

prop_compose! {
    fn activity_tag()(ids in (uuid(), uuid(), uuid()), app_id in text(), times in (any::<i64>(), any::<i64>()),
        model_version in text(), activity in text(), confidence in 0f32..=1.0,
        probabilities in prop::collection::vec((text(), 0f32..=1.0), 0..6),
        reason in prop::option::of(text())) -> ActivityTag {
        ActivityTag {
            event_id: ids.0, session_id: ids.1, install_id: ids.2, app_id, timestamp: times.0, tagged_at: times.1,
            model_version, activity, confidence, reason,
            probabilities: probabilities.into_iter().map(|(label, probability)| ClassProbability { label, probability }).collect(),
        }
    }
}

prop_compose! {
    fn dead_letter()(source in text(), reason in text(), detail in text(),
        source_topic in prop::option::of(text()), source_partition in prop::option::of(any::<i32>()),
        source_offset in prop::option::of(any::<i64>()), app_id in prop::option::of(text()),
        event_id in prop::option::of(text()), failed_at in any::<i64>(),
        payload in prop::collection::vec(any::<u8>(), 0..512)) -> DeadLetter {
        DeadLetter { source, reason, detail, source_topic, source_partition, source_offset, app_id, event_id, failed_at, payload }
    }
}

fn assert_roundtrip<T: AvroRecord + PartialEq + std::fmt::Debug>(record: &T, schema_id: u32) {
    let body = record.encode().unwrap();
    assert_eq!(&T::decode(&body).unwrap(), record);
    let framed = record.to_wire(schema_id).unwrap();
    let (id, decoded) = decode_wire::<T, _>(&framed, |_| Ok(std::sync::Arc::new(T::schema().clone()))).unwrap();
    assert_eq!(id, schema_id);
    assert_eq!(&decoded, record);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn context_event_roundtrips(e in context_event(), id in any::<u32>()) {
        assert_roundtrip(&e, id);
    }

    #[test]
    fn the_fast_event_writer_matches_apache_avro(e in context_event()) {
        let fast = e.encode().unwrap();
        let generic = context_schemas::codec::encode_generic(&e).unwrap();
        if e.device.extra.len() <= 1 {
            // (a map's entry order is free; with one entry the bytes must agree)
            prop_assert_eq!(&fast, &generic);
        } else {
            prop_assert_eq!(fast.len(), generic.len());
        }
        prop_assert_eq!(ContextEvent::decode(&generic).unwrap(), ContextEvent::decode(&fast).unwrap());
        prop_assert_eq!(context_schemas::codec::decode_generic::<ContextEvent>(&fast).unwrap(), e);
    }

    #[test]
    fn the_fast_motion_window_writer_matches_apache_avro(w in motion_window()) {
        prop_assert_eq!(w.encode().unwrap(), context_schemas::codec::encode_generic(&w).unwrap());
    }

    #[test]
    fn the_fast_event_reader_refuses_garbage_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        // Whatever it returns for random bytes, the generic reader must agree it is an error
        // or the same event.
        if let Ok(e) = ContextEvent::decode(&bytes) {
            prop_assert_eq!(context_schemas::codec::decode_generic::<ContextEvent>(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn motion_window_roundtrips(w in motion_window(), id in any::<u32>()) {
        assert_roundtrip(&w, id);
    }

    #[test]
    fn activity_tag_roundtrips(t in activity_tag(), id in any::<u32>()) {
        assert_roundtrip(&t, id);
    }

    #[test]
    fn dead_letter_roundtrips(d in dead_letter(), id in any::<u32>()) {
        assert_roundtrip(&d, id);
    }

    #[test]
    fn truncated_bodies_never_decode(e in context_event(), cut in 1usize..64) {
        let body = e.encode().unwrap();
        let cut = cut.min(body.len());
        let err = ContextEvent::decode(&body[..body.len() - cut]);
        prop_assert!(err.is_err(), "a body cut by {} bytes decoded", cut);
    }
}

#[test]
fn largest_realistic_event_roundtrips() {
    let e = sample::largest_event(7);
    assert_eq!(e.signals.count_set(), catalog().len());
    assert_eq!(e.motion.as_ref().unwrap().accelerometer.len(), Some(1000));
    let body = e.encode().unwrap();
    assert!(body.len() > 20_000, "body is only {} bytes", body.len());
    assert_roundtrip(&e, 42);
}

#[test]
fn realistic_event_matches_the_documented_size() {
    // A 50-event batch of typical events is about what the SDK sends per session.
    let e = sample::event(1, &SampleOptions::default());
    let body = e.encode().unwrap();
    assert!(
        (2_000..8_000).contains(&body.len()),
        "typical event is {} bytes",
        body.len()
    );
    let w = MotionWindow::from_event(&e).unwrap();
    assert_eq!(w.accelerometer, e.motion.as_ref().unwrap().accelerometer);
    assert_roundtrip(&w, 3);
}

#[test]
fn records_of_an_older_schema_decode_into_the_current_type() {
    let old = Schema::parse_str(&sample::schema_without_signal("optimized_charging")).unwrap();
    let mut e = sample::event(9, &SampleOptions::default());
    e.signals.clear(catalog().get("optimized_charging").unwrap().index);
    let value = sample::value_without_signal(&e, "optimized_charging");
    let body = context_schemas::codec::write_datum(&old, value).unwrap();
    assert!(
        ContextEvent::decode(&body).is_err(),
        "the current schema alone cannot read old bytes"
    );
    let decoded = ContextEvent::decode_from(&body, &old).unwrap();
    assert_eq!(decoded, e);
    assert_eq!(decoded.signals.get("optimized_charging"), None);
}

#[test]
fn wire_format_errors_are_clear() {
    let err = decode_wire::<ContextEvent, _>(&[1, 0, 0, 0, 7, 1, 2], |_| unreachable!()).unwrap_err();
    assert!(err.to_string().contains("magic byte"), "{err}");
    let framed = wire::frame(5, b"\x02garbage");
    let err = decode_wire::<ContextEvent, _>(&framed, |_| Ok(std::sync::Arc::new(ContextEvent::schema().clone())))
        .unwrap_err();
    assert!(err.to_string().contains("ContextEvent"), "{err}");
}

#[test]
fn signals_refuse_unknown_names_and_wrong_types() {
    let mut s = Signals::default();
    assert!(s.set("no_such_signal", SignalValue::Boolean(true)).is_err());
    let err = s.set("battery_level", SignalValue::String("high".into())).unwrap_err();
    assert!(
        err.to_string().contains("battery_level") && err.to_string().contains("double"),
        "{err}"
    );
    s.set("battery_level", SignalValue::Double(0.5)).unwrap();
    assert_eq!(s.get("battery_level"), Some(&SignalValue::Double(0.5)));
}
