//! The activity model on real phone data (`data/hapt/train`, UCI HAPT:
//! Reyes-Ortiz et al., Neurocomputing 171, 2016, CC BY 4.0): trained on 15
//! subjects, judged on 6 it has never seen, and on synthetic transforms of
//! their windows that a fleet of phones produces: another sample rate, the
//! phone turned in any way, the other sign convention, a shorter window;
//! and on input unlike any phone on a body (a dead sensor, a vibration,
//! random values, a wrist's linear acceleration), which must be `unknown`.

use std::path::PathBuf;

use context_schemas::sample::SampleRng;
use context_schemas::Axes3;
use enrich_activity::dataset::{read_recordings, Cut, LabelledWindow};
use enrich_activity::features::FeatureSpec;
use enrich_activity::model::{rotated, train_with, Model, TrainOptions};

fn hapt() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/hapt/train")
}

/// 15 subjects to train on and 6 to judge with (10 s windows, apart).
fn split() -> (Vec<LabelledWindow>, Vec<LabelledWindow>) {
    let train_cut = Cut {
        seconds: vec![2.5, 5.0, 10.0],
        hop_seconds: 5.0,
        transitions: false,
    };
    let all = read_recordings(&hapt(), &train_cut).unwrap();
    let mut subjects: Vec<String> = all.iter().filter_map(|w| w.group.clone()).collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 21, "{subjects:?}");
    let held_out: Vec<String> = subjects[15..].to_vec();
    let train: Vec<LabelledWindow> = all
        .into_iter()
        .filter(|w| !held_out.contains(w.group.as_ref().unwrap()))
        .collect();
    let test_cut = Cut {
        seconds: vec![10.0],
        hop_seconds: 10.0,
        transitions: false,
    };
    let test = read_recordings(&hapt(), &test_cut)
        .unwrap()
        .into_iter()
        .filter(|w| held_out.contains(w.group.as_ref().unwrap()))
        .collect();
    (train, test)
}

fn trained(train: &[LabelledWindow]) -> Model {
    let (model, _) = train_with(
        train,
        &FeatureSpec::default(),
        &TrainOptions {
            folds: 3,
            ..TrainOptions::default()
        },
    )
    .unwrap();
    model
}

/// The model's answer for each window: its label or `unknown`.
fn answers(model: &Model, windows: &[LabelledWindow]) -> Vec<String> {
    model
        .evaluate(windows, &FeatureSpec::default())
        .windows
        .into_iter()
        .map(|w| w.predicted)
        .collect()
}

fn agreement(a: &[String], b: &[String]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// F1 of "walking" against everything else (unknown counts as not walking).
fn walking_f1(windows: &[LabelledWindow], answers: &[String]) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for (w, a) in windows.iter().zip(answers) {
        match (w.label == "walking", a == "walking") {
            (true, true) => tp += 1.0,
            (false, true) => fp += 1.0,
            (true, false) => fn_ += 1.0,
            _ => {}
        }
    }
    2.0 * tp / (2.0 * tp + fp + fn_)
}

fn map(w: &LabelledWindow, f: impl Fn(&Axes3, bool) -> Axes3, rate: f64) -> LabelledWindow {
    LabelledWindow {
        accelerometer: f(&w.accelerometer, true),
        gyroscope: f(&w.gyroscope, false),
        rate_hz: rate,
        ..w.clone()
    }
}

/// Linear interpolation to twice the rate.
fn doubled(a: &Axes3) -> Axes3 {
    let up = |v: &[f32]| -> Vec<f32> {
        (0..2 * v.len() - 1)
            .map(|i| {
                if i % 2 == 0 {
                    v[i / 2]
                } else {
                    0.5 * (v[i / 2] + v[i / 2 + 1])
                }
            })
            .collect()
    };
    Axes3 {
        x: up(&a.x),
        y: up(&a.y),
        z: up(&a.z),
    }
}

#[test]
fn on_subjects_it_has_never_seen_the_model_holds_across_rates_lengths_rotations_and_signs() {
    let (train, test) = split();
    let model = trained(&train);
    assert_eq!(model.cv.folds_by, "subject");
    assert_eq!(model.training.groups.len(), 15);
    let spec = FeatureSpec::default();

    let plain = model.evaluate(&test, &spec);
    println!(
        "held-out subjects: accuracy {:.3}, macro-F1 {:.3}, unknown {:.3}, ECE {:.3}",
        plain.accuracy, plain.macro_f1, plain.unknown_share, plain.ece
    );
    for c in &plain.per_class {
        println!(
            "  {} precision {:.3} recall {:.3} F1 {:.3}",
            c.label, c.precision, c.recall, c.f1
        );
    }
    assert!(plain.macro_f1 > 0.8, "macro-F1 {}", plain.macro_f1);
    let lying = plain.per_class.iter().find(|c| c.label == "lying").unwrap();
    assert!(lying.recall > 0.85, "lying recall {}", lying.recall);
    assert!(
        plain.unknown_share < 0.15,
        "familiar windows unknown: {}",
        plain.unknown_share
    );
    let base = answers(&model, &test);

    // The same windows at 100 Hz.
    let fast: Vec<LabelledWindow> = test
        .iter()
        .map(|w| map(w, |a, _| doubled(a), 2.0 * w.rate_hz))
        .collect();
    let same = agreement(&base, &answers(&model, &fast));
    println!("100 Hz: {same:.3} of the answers unchanged");
    assert!(same >= 0.95, "{same}");

    // The first 2.5 s of each window.
    let cut = |a: &Axes3, _| Axes3 {
        x: a.x[..125].to_vec(),
        y: a.y[..125].to_vec(),
        z: a.z[..125].to_vec(),
    };
    let short: Vec<LabelledWindow> = test.iter().map(|w| map(w, cut, w.rate_hz)).collect();
    let same = agreement(&base, &answers(&model, &short));
    println!("2.5 s: {same:.3} of the answers unchanged");
    assert!(same >= 0.8, "{same}");

    // Turned in any way: walking is still told from the rest.
    let mut rng = SampleRng::new(11);
    let turned: Vec<LabelledWindow> = test.iter().map(|w| rotated(w, &mut rng)).collect();
    let (before, after) = (walking_f1(&test, &base), walking_f1(&turned, &answers(&model, &turned)));
    println!("walking F1: {before:.3} as held, {after:.3} turned at random");
    assert!(after >= 0.9, "{after}");

    // Android's sign: the acceleration negated.
    let negate = |a: &Axes3, acc: bool| {
        if acc {
            Axes3 {
                x: a.x.iter().map(|v| -v).collect(),
                y: a.y.iter().map(|v| -v).collect(),
                z: a.z.iter().map(|v| -v).collect(),
            }
        } else {
            a.clone()
        }
    };
    let negated: Vec<LabelledWindow> = test.iter().map(|w| map(w, negate, w.rate_hz)).collect();
    let f1 = walking_f1(&negated, &answers(&model, &negated));
    println!("walking F1 with the acceleration negated: {f1:.3}");
    assert!(f1 >= 0.9, "{f1}");

    // Unfamiliar input.
    let mut rng = SampleRng::new(3);
    let mut odd = Vec::new();
    let window = |label: &str, rate: f64, acc: Axes3, gyr: Axes3| LabelledWindow {
        label: label.into(),
        rate_hz: rate,
        accelerometer: acc,
        gyroscope: gyr,
        group: None,
        id: label.into(),
    };
    let flat = |n: usize, v: f32| Axes3 {
        x: vec![0.0; n],
        y: vec![0.0; n],
        z: vec![v; n],
    };
    for i in 0..40 {
        odd.push(window("dead_sensor", 50.0, flat(500, 0.0), flat(500, 0.0)));
        let f = [12.0, 20.0, 30.0, 45.0][i % 4];
        let amp = rng.range(0.3, 1.5);
        let buzz = Axes3 {
            x: vec![0.0; 1000],
            y: vec![0.0; 1000],
            z: (0..1000)
                .map(|t| (-1.0 + amp * (2.0 * std::f64::consts::PI * f * t as f64 / 100.0).sin()) as f32)
                .collect(),
        };
        odd.push(rotated(&window("vibration", 100.0, buzz, flat(1000, 0.0)), &mut rng));
        let noise = |rng: &mut SampleRng, scale: f64| Axes3 {
            x: (0..500).map(|_| rng.range(-scale, scale) as f32).collect(),
            y: (0..500).map(|_| rng.range(-scale, scale) as f32).collect(),
            z: (0..500).map(|_| rng.range(-scale, scale) as f32).collect(),
        };
        let (acc, gyr) = (noise(&mut rng, 2.0), noise(&mut rng, 5.0));
        odd.push(window("random", 50.0, acc, gyr));
    }
    // A wrist's linear acceleration (m/s², gravity removed): BasicMotions.
    odd.extend(
        enrich_activity::dataset::parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0)
            .unwrap()
            .into_iter()
            .map(|w| LabelledWindow {
                label: "wrist_linear".into(),
                ..w
            }),
    );
    let e = model.evaluate(&odd, &spec);
    let unknown = e.columns.len() - 1;
    for (row, counts) in e.rows.iter().zip(&e.confusion) {
        let n: usize = counts.iter().sum();
        if n == 0 {
            continue;
        }
        let share = counts[unknown] as f64 / n as f64;
        println!("{row}: {share:.3} unknown");
        assert!(share >= 0.9, "{row}: only {share} unknown");
    }
}

#[test]
fn recordings_are_cut_within_one_activity_and_grouped_by_subject() {
    let cut = Cut {
        seconds: vec![5.0],
        hop_seconds: 2.5,
        transitions: true,
    };
    let windows = read_recordings(&hapt(), &cut).unwrap();
    let mut labels: Vec<&str> = windows.iter().map(|w| w.label.as_str()).collect();
    labels.sort();
    labels.dedup();
    assert_eq!(labels, ["lying", "sitting", "standing", "transition", "walking"]);
    for w in windows.iter().filter(|w| w.label != "transition") {
        assert_eq!(w.rate_hz, 50.0);
        assert_eq!(w.accelerometer.len(), Some(250), "{}", w.id);
        assert_eq!(w.gyroscope.len(), Some(250));
        assert!(
            w.group.as_deref().is_some_and(|g| g.starts_with("subject")),
            "{:?}",
            w.group
        );
    }
    // Acceleration in g with gravity: a phone on a body reads about 1 g.
    let mean_norm = windows
        .iter()
        .take(200)
        .map(|w| {
            let n = w.accelerometer.x.len() as f64;
            let m = |v: &[f32]| v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
            (m(&w.accelerometer.x).powi(2) + m(&w.accelerometer.y).powi(2) + m(&w.accelerometer.z).powi(2)).sqrt()
        })
        .sum::<f64>()
        / 200.0;
    assert!((0.9..1.1).contains(&mean_norm), "{mean_norm}");
}
