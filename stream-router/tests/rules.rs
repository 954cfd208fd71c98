//! The rule matcher: validation messages, evaluation order, and properties
//! that must hold for any event and constant.

use context_schemas::sample::{self, SampleOptions};
use context_schemas::{ContextEvent, SignalValue};
use proptest::prelude::*;
use stream_router::rules::{sample_bucket, Rules};

fn event(seed: u64, battery: Option<f64>, network: &str, app: &str, motion: bool) -> ContextEvent {
    let opts = SampleOptions {
        app_id: app.into(),
        motion_seconds: if motion { 1.0 } else { 0.0 },
        ..SampleOptions::default()
    };
    let mut e = sample::event(seed, &opts);
    match battery {
        Some(b) => e.signals.set("battery_level", SignalValue::Double(b)).unwrap(),
        None => {
            let index = context_schemas::catalog().get("battery_level").unwrap().index;
            e.signals.clear(index)
        }
    }
    e.signals
        .set("network_type", SignalValue::String(network.into()))
        .unwrap();
    e
}

fn fires(rules: &str, e: &ContextEvent) -> bool {
    !Rules::parse(rules).unwrap().evaluate(e).targets.is_empty()
}

fn rule(cond: &str) -> String {
    format!("[[rules]]\nname = \"r\"\nwhen = [{cond}]\nto = [{{ topic = \"t.v1\" }}]\n")
}

#[test]
fn the_shipped_rules_route_motion_to_the_tagger_and_drop_the_rest() {
    let rules = Rules::parse(include_str!("../rules.toml")).unwrap();
    assert_eq!(rules.targets().len(), 1);
    assert_eq!(rules.targets()[0].topic, "context.motion.v1");
    let with = rules.evaluate(&event(1, Some(0.5), "wifi", "a", true));
    assert_eq!(with.targets, vec![0]);
    let without = rules.evaluate(&event(2, Some(0.5), "wifi", "a", false));
    assert!(without.targets.is_empty());
    assert_eq!(without.dropped.as_deref(), Some("no rule matched"));
}

#[test]
fn every_problem_names_its_rule_and_field() {
    let text = r#"
[[rules]]
name = "a"
when = [{ field = "battery_level", op = "in", value = 0.2 }, { field = "wifi_ssid_hash", op = "~", value = "x" }]
to = [{ topic = "bad topic" }]

[[rules]]
name = "a"
when = [{ field = "motion", op = "==", value = true }]
drop = "x"
to = [{ topic = "t.v1" }]

[[rules]]
name = "c"
sample_percent = 150
when = [{ field = "charging", op = "==", value = "yes" }]
drop = ""
"#;
    let err = Rules::parse(text).unwrap_err().to_string();
    for expected in [
        "rule `a`, field `battery_level`: `in` takes a list",
        "rule `a`, field `wifi_ssid_hash`:",
        "rule `a`, field `to.topic`: `bad topic` is not a Kafka topic name",
        "rule `a`: the name is used by an earlier rule",
        "rule `a`, field `motion`: `motion` takes only `present` or `absent`",
        "rule `a`, field `drop`: a rule either routes",
        "rule `c`, field `sample_percent`: 150 is not between 0 and 100",
        "rule `c`, field `charging`:",
        "rule `c`, field `drop`: the reason is empty",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
    let err = Rules::parse("[[rules]]\nnme = \"x\"\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `nme`"), "{err}");
}

#[test]
fn rules_fire_in_order_a_drop_ends_evaluation_and_targets_are_deduplicated() {
    let text = r#"
[[rules]]
name = "one"
when = [{ field = "app_id", op = "==", value = "a" }]
to = [{ topic = "x.v1" }, { topic = "y.v1" }]

[[rules]]
name = "two"
when = [{ field = "network_type", op = "==", value = "wifi" }]
to = [{ topic = "y.v1" }]

[[rules]]
name = "stop"
when = [{ field = "battery_level", op = "absent" }]
drop = "no battery"

[default]
to = [{ topic = "rest.v1" }]
"#;
    let rules = Rules::parse(text).unwrap();
    let d = rules.evaluate(&event(1, Some(0.5), "wifi", "a", false));
    assert_eq!(d.fired, vec!["one", "two"]);
    let topics: Vec<&str> = d.targets.iter().map(|t| rules.targets()[*t].topic.as_str()).collect();
    assert_eq!(topics, vec!["x.v1", "y.v1"]);
    let d = rules.evaluate(&event(2, None, "wifi", "a", false));
    assert!(d.targets.is_empty());
    assert_eq!(d.dropped.as_deref(), Some("no battery"));
    let d = rules.evaluate(&event(3, Some(0.5), "cellular", "b", false));
    assert_eq!(rules.targets()[d.targets[0]].topic, "rest.v1");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// For a present number, `<` and `>=` (and `>` and `<=`) never agree.
    #[test]
    fn comparisons_are_complementary(battery in 0.0f64..=1.0, c in -0.5f64..1.5, seed in 0u64..1000) {
        let e = event(seed, Some(battery), "wifi", "a", false);
        prop_assert_ne!(fires(&rule(&format!("{{ field = \"battery_level\", op = \"<\", value = {c:?} }}")), &e),
                        fires(&rule(&format!("{{ field = \"battery_level\", op = \">=\", value = {c:?} }}")), &e));
        prop_assert_ne!(fires(&rule(&format!("{{ field = \"battery_level\", op = \">\", value = {c:?} }}")), &e),
                        fires(&rule(&format!("{{ field = \"battery_level\", op = \"<=\", value = {c:?} }}")), &e));
        prop_assert_eq!(fires(&rule(&format!("{{ field = \"battery_level\", op = \"<\", value = {c:?} }}")), &e), battery < c);
    }

    /// `in` is `==` to any member, `not_in` its negation.
    #[test]
    fn in_is_any_equal(network in prop::sample::select(vec!["none", "wifi", "cellular", "wired", "other"]),
                       list in prop::collection::vec(prop::sample::select(vec!["none", "wifi", "cellular", "wired", "other"]), 1..4),
                       seed in 0u64..1000) {
        let e = event(seed, Some(0.5), network, "a", false);
        let quoted: Vec<String> = list.iter().map(|s| format!("\"{s}\"")).collect();
        let any_eq = list.iter().any(|v| fires(&rule(&format!("{{ field = \"network_type\", op = \"==\", value = \"{v}\" }}")), &e));
        let is_in = fires(&rule(&format!("{{ field = \"network_type\", op = \"in\", value = [{}] }}", quoted.join(", "))), &e);
        let not_in = fires(&rule(&format!("{{ field = \"network_type\", op = \"not_in\", value = [{}] }}", quoted.join(", "))), &e);
        prop_assert_eq!(is_in, any_eq);
        prop_assert_eq!(not_in, !any_eq);
        prop_assert_eq!(is_in, list.contains(&network));
    }

    /// Sampling keeps an install exactly when its bucket is under the share:
    /// the same installs every time, all of them at 100 %, none at 0 %.
    #[test]
    fn sampling_is_deterministic_by_install(percent in 0.0f64..=100.0, seed in 0u64..10_000) {
        let e = event(seed, Some(0.5), "wifi", "a", false);
        let text = format!("[[rules]]\nname = \"s\"\nsample_percent = {percent:?}\nto = [{{ topic = \"t.v1\" }}]\n");
        let kept = fires(&text, &e);
        prop_assert_eq!(kept, fires(&text, &e));
        prop_assert_eq!(kept, sample_bucket(e.install_id.as_bytes()) < (percent * 100.0).round() as u32);
        let all = "[[rules]]\nname = \"s\"\nsample_percent = 100\nto = [{ topic = \"t.v1\" }]\n";
        let none = "[[rules]]\nname = \"s\"\nsample_percent = 0\nto = [{ topic = \"t.v1\" }]\n";
        prop_assert!(fires(all, &e));
        prop_assert!(!fires(none, &e));
    }
}

#[test]
fn a_sample_share_keeps_about_that_share_of_installs() {
    let kept = (0..10_000u64)
        .filter(|i| {
            let id = uuid::Uuid::from_u64_pair(*i, i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            sample_bucket(id.as_bytes()) < 1_000
        })
        .count();
    assert!((800..1_200).contains(&kept), "10 % sample kept {kept} of 10,000");
}
