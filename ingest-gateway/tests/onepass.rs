//! The one-pass reader against the generic path, on bodies a real SDK sends
//! and on bodies bent every way a client could bend them: whenever the
//! one-pass reader accepts a body, the generic path must give the very same
//! batch (every Avro byte, every count), and the realistic bodies must
//! take the fast path at all.

use std::time::Duration;

use context_schemas::catalog::catalog;
use context_schemas::sample::{self, SampleOptions};
use ingest_gateway::pipeline::{prepare_generic, prepare_onepass, PreparedBatch, Request};
use ingest_gateway::validate::Validator;
use ingest_gateway::{sdk, BatchError, Limits};
use proptest::prelude::*;
use serde_json::{json, Value};

const NOW: i64 = 1_760_000_000_000_000;
const REQUEST: Request<'static> = Request {
    app_id: "app",
    received_at: NOW,
    sent_at: None,
    schema_id: 7,
};

fn validator() -> Validator {
    let limits = Limits {
        max_events: 8,
        max_samples: 64,
        ..Limits::default()
    };
    Validator::new(limits, Duration::from_secs(3600), Duration::from_secs(86400 * 30))
}

fn run(json: &str) -> (Option<PreparedBatch>, Result<PreparedBatch, BatchError>) {
    let v = validator();
    (
        prepare_onepass(json.as_bytes(), &REQUEST, &v),
        prepare_generic(json.as_bytes(), &REQUEST, &v),
    )
}

/// A session's batch from the sample generator, as a JSON value.
fn batch(seed: u64, events: usize, motion_seconds: f64) -> Value {
    let opts = SampleOptions {
        timestamp: NOW,
        motion_seconds,
        rate_hz: 10.0,
        ..SampleOptions::default()
    };
    let events = (0..events as u64)
        .map(|i| sample::event(seed * 16 + i, &opts))
        .collect();
    sdk::batch_json(&sdk::as_session(events, NOW), NOW)
}

/// A change to a batch. Numbers are given as text, put in place of a
/// placeholder after serialisation, so that every JSON spelling is tried.
#[derive(Debug, Clone)]
enum Tweak {
    /// Sets signal `signal` (an index into the catalogue) of an event.
    SignalNumber(usize, usize, String),
    SignalValue(usize, usize, Value),
    /// Adds a field no catalogue knows: to an event (0), its motion (1),
    /// its signals (2), the sdk (3), the device (4), the batch (5).
    Unknown(usize, u8, Value),
    /// Replaces the accelerometer (false) or gyroscope (true) samples.
    Samples(usize, bool, Vec<[String; 3]>),
    Rate(usize, String),
    /// Sets a field of an event to null.
    Null(usize, &'static str),
}

/// JSON numbers of every spelling, most of them in range for `f32`.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<f32>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        any::<f32>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        (-2.0f64..2.0).prop_map(|f| f.to_string()),
        (-2.0f64..2.0, 0usize..18).prop_map(|(f, p)| format!("{f:.p$}")),
        (
            any::<bool>(),
            prop_oneof!["0", "[1-9][0-9]{0,21}"],
            proptest::option::of("[0-9]{1,22}"),
            proptest::option::of("[eE][+-]?[0-9]{1,2}"),
        )
            .prop_map(|(neg, int, frac, exp)| {
                format!(
                    "{}{int}{}{}",
                    if neg { "-" } else { "" },
                    frac.map(|f| format!(".{f}")).unwrap_or_default(),
                    exp.unwrap_or_default()
                )
            }),
    ]
}

fn scalar_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        "[a-z_]{0,12}".prop_map(Value::String),
        // Escapes, non-ASCII and a nested value: the generic path decides.
        Just(json!("wi\"fi")),
        Just(json!("wïfi")),
        Just(json!([1, 2])),
    ]
}

fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        scalar_value(),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn tweak() -> impl Strategy<Value = Tweak> {
    let event = 0usize..3;
    prop_oneof![
        4 => (event.clone(), 0usize..400, number_text()).prop_map(|(e, s, t)| Tweak::SignalNumber(e, s, t)),
        2 => (event.clone(), 0usize..400, scalar_value()).prop_map(|(e, s, v)| Tweak::SignalValue(e, s, v)),
        2 => (event.clone(), 0u8..6, any_value()).prop_map(|(e, p, v)| Tweak::Unknown(e, p, v)),
        3 => (event.clone(), any::<bool>(), proptest::collection::vec([number_text(), number_text(), number_text()], 0..5))
            .prop_map(|(e, g, s)| Tweak::Samples(e, g, s)),
        1 => (event.clone(), prop_oneof![number_text(), Just("50".to_owned()), Just("-0".to_owned())])
            .prop_map(|(e, t)| Tweak::Rate(e, t)),
        1 => (event, prop_oneof![Just("motion"), Just("signals"), Just("event_id")]).prop_map(|(e, f)| Tweak::Null(e, f)),
    ]
}

/// Applies the tweaks and serialises, compactly or pretty.
fn body(mut batch: Value, tweaks: &[Tweak], pretty: bool) -> String {
    let mut texts = Vec::new();
    let mut placeholder = |text: String| {
        texts.push(text);
        Value::String(format!("@@{}@@", texts.len() - 1))
    };
    let events = batch["events"].as_array().map_or(0, Vec::len);
    let cat = catalog();
    for t in tweaks {
        let ev = |e: usize| e % events;
        match t {
            Tweak::SignalNumber(e, s, text) => {
                let name = &cat.signals[s % cat.len()].name;
                batch["events"][ev(*e)]["signals"][name] = placeholder(text.clone());
            }
            Tweak::SignalValue(e, s, v) => {
                let name = &cat.signals[s % cat.len()].name;
                batch["events"][ev(*e)]["signals"][name] = v.clone();
            }
            Tweak::Unknown(e, place, v) => {
                let target = match place {
                    0 => &mut batch["events"][ev(*e)],
                    1 if batch["events"][ev(*e)]["motion"].is_object() => &mut batch["events"][ev(*e)]["motion"],
                    2 => &mut batch["events"][ev(*e)]["signals"],
                    3 => &mut batch["sdk"],
                    4 => &mut batch["device"],
                    _ => &mut batch,
                };
                if target.is_object() {
                    target["from_a_newer_sdk"] = v.clone();
                }
            }
            Tweak::Samples(e, gyro, samples) => {
                let text = format!(
                    "[{}]",
                    samples
                        .iter()
                        .map(|[x, y, z]| format!("[{x}, {y},{z}]"))
                        .collect::<Vec<_>>()
                        .join(" ,")
                );
                let motion = &mut batch["events"][ev(*e)]["motion"];
                if motion.is_object() {
                    motion[if *gyro { "gyroscope" } else { "accelerometer" }] = placeholder(text);
                }
            }
            Tweak::Rate(e, text) => {
                let motion = &mut batch["events"][ev(*e)]["motion"];
                if motion.is_object() {
                    motion["sample_rate_hz"] = placeholder(text.clone());
                }
            }
            Tweak::Null(e, field) => batch["events"][ev(*e)][*field] = Value::Null,
        }
    }
    let mut json = if pretty {
        serde_json::to_string_pretty(&batch).unwrap()
    } else {
        batch.to_string()
    };
    for (i, text) in texts.iter().enumerate() {
        json = json.replace(&format!("\"@@{i}@@\""), text);
    }
    json
}

fn same(fast: &PreparedBatch, generic: &PreparedBatch) -> bool {
    format!("{fast:?}") == format!("{generic:?}")
}

#[test]
fn realistic_batches_take_the_fast_path_and_match_the_generic_one() {
    for seed in 0..40 {
        let json = body(
            batch(seed, 1 + seed as usize % 8, [0.0, 2.0, 6.4][seed as usize % 3]),
            &[],
            seed % 2 == 1,
        );
        let (fast, generic) = run(&json);
        let generic = generic.unwrap();
        assert!(generic.rejected.is_empty(), "{:?}", generic.rejected);
        let fast = fast.unwrap_or_else(|| panic!("seed {seed}: the one-pass reader gave up on a realistic batch"));
        assert!(same(&fast, &generic), "seed {seed}");
    }
}

#[test]
fn what_the_fast_path_gives_up_on_the_generic_path_reads() {
    let good = body(batch(1, 2, 2.0), &[], false);
    let cases = [
        // An escape (`\u0032` is the `2` of the year), a duplicate key, a
        // number of more than 19 digits, an event beyond max_events, too
        // many samples.
        good.replacen("\"timestamp\":\"2", "\"timestamp\":\"\\u0032", 1),
        good.replacen("{\"event_id\"", "{\"event_id\":\"x\",\"event_id\"", 1),
        good.replacen("\"sample_rate_hz\":10.0", "\"sample_rate_hz\":100000000000000000000", 1),
        body(batch(1, 9, 0.0), &[], false),
        body(batch(1, 1, 6.5), &[], false),
        // A rejected event.
        good.replacen("\"sample_rate_hz\":10.0", "\"sample_rate_hz\":0.5", 1),
    ];
    for (i, case) in cases.iter().enumerate() {
        assert_ne!(*case, good, "case {i} must change the body");
    }
    for (i, json) in cases.iter().enumerate() {
        let (fast, generic) = run(json);
        assert!(
            fast.is_none(),
            "case {i}: the one-pass reader must leave it to the generic path"
        );
        // The generic path still reads it (an error or a batch).
        let _ = generic;
    }
    // The escaped year is still a valid event for the generic path.
    let (_, generic) = run(&cases[0]);
    assert!(generic.unwrap().rejected.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the one-pass reader accepts, the generic path accepts to
    /// the very same batch.
    #[test]
    fn the_fast_path_agrees_with_the_generic_path(
        seed in 0u64..1000,
        events in 1usize..4,
        motion in prop_oneof![Just(0.0), Just(0.5), Just(2.0)],
        tweaks in proptest::collection::vec(tweak(), 0..6),
        pretty in any::<bool>(),
    ) {
        let json = body(batch(seed, events, motion), &tweaks, pretty);
        let (fast, generic) = run(&json);
        if let Some(fast) = fast {
            let generic = generic.map_err(|e| TestCaseError::fail(format!("the generic path refused it: {e}")))?;
            prop_assert!(same(&fast, &generic), "{json}");
        }
    }
}

/// The benchmark's batch (50 events of 2 s of 50 Hz motion, numbers as
/// serde_json writes an `f32` widened to `f64`: 17 digits) is read by the
/// fast path, so `cargo bench` measures it.
#[test]
fn the_benchmarks_batch_takes_the_fast_path() {
    let opts = SampleOptions {
        timestamp: NOW,
        ..SampleOptions::default()
    };
    let events = (0..50u64).map(|i| sample::event(i, &opts)).collect();
    let json = sdk::batch_json(&sdk::as_session(events, NOW), NOW).to_string();
    let v = Validator::new(
        Limits::default(),
        Duration::from_secs(3600),
        Duration::from_secs(86400 * 30),
    );
    let generic = prepare_generic(json.as_bytes(), &REQUEST, &v).unwrap();
    assert!(generic.rejected.is_empty());
    let fast = prepare_onepass(json.as_bytes(), &REQUEST, &v).expect("the fast path reads it");
    assert!(same(&fast, &generic));
}
