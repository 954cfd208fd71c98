//! `enrich-activity train` and `eval` as a user runs them.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_enrich-activity"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn train_then_eval_and_the_same_seed_gives_the_same_version() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/BasicMotions_TRAIN.ts");
    let dir = std::env::temp_dir().join(format!("enrich-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (a, b) = (dir.join("a.json"), dir.join("b.json"));
    let (ok, text) = run(&["train", "--data", data, "--out", a.to_str().unwrap(), "--seed", "3"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("cross-validated by stratified") && text.contains("true\\pred"),
        "{text}"
    );
    let (ok, _) = run(&["train", "--data", data, "--out", b.to_str().unwrap(), "--seed", "3"]);
    assert!(ok);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let (ok, json) = run(&["eval", "--data", data, "--model", a.to_str().unwrap(), "--json"]);
    assert!(ok, "{json}");
    let eval: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(eval["count"], 40);
    let windows = eval["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 40);
    for w in windows {
        assert!(
            w["id"].is_string() && w["label"].is_string() && w["predicted"].is_string(),
            "{w}"
        );
        assert!(
            w["confidence"].as_f64().is_some_and(|c| (0.0..=1.0).contains(&c)),
            "{w}"
        );
    }
    assert!(eval["accuracy"].as_f64().unwrap() >= 0.9, "{eval}");

    let (ok, err) = run(&["eval", "--data", "no-such.ts", "--model", a.to_str().unwrap()]);
    assert!(!ok && err.contains("no-such.ts"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The phone recordings train a model by subject; `eval` reads the ingest
/// API's motion objects one a line, labels in any case and by synonym.
#[test]
fn phone_recordings_train_and_jsonl_windows_evaluate() {
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/data/hapt/train");
    let dir = std::env::temp_dir().join(format!("enrich-cli-hapt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("model.json");
    let (ok, text) = run(&[
        "train",
        "--data",
        data,
        "--out",
        model.to_str().unwrap(),
        "--window-seconds",
        "5,10",
        "--hop-seconds",
        "5",
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains("of 21 subjects") && text.contains("cross-validated by subject"),
        "{text}"
    );
    let artifact: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&model).unwrap()).unwrap();
    assert_eq!(artifact["training"]["groups"].as_array().unwrap().len(), 21);
    assert_eq!(artifact["feature_spec"]["version"], 2);
    assert!(artifact["gate"]["min_confidence"].as_f64().is_some());

    // Windows of the recordings as JSON lines, their labels spelt otherwise.
    let cut = enrich_activity::dataset::Cut {
        seconds: vec![10.0],
        hop_seconds: 30.0,
        transitions: false,
    };
    let windows = enrich_activity::dataset::read_recordings(std::path::Path::new(data), &cut).unwrap();
    let mut lines = String::new();
    let picked: Vec<_> = windows.iter().step_by(3).take(120).collect();
    assert_eq!(picked.len(), 120);
    for w in picked {
        let label = match w.label.as_str() {
            "walking" => "Walking_Upstairs",
            "lying" => "LAYING",
            other => other,
        };
        let mut w = w.clone();
        w.label = label.into();
        lines.push_str(&enrich_activity::dataset::jsonl_line(&w));
        lines.push('\n');
    }
    let file = dir.join("windows.jsonl");
    std::fs::write(&file, lines).unwrap();
    let (ok, json) = run(&[
        "eval",
        "--data",
        file.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{json}");
    let eval: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(eval["count"], 120);
    assert_eq!(
        eval["rows"].as_array().unwrap().len(),
        4,
        "Walking_Upstairs and LAYING are read as walking and lying: {}",
        eval["rows"]
    );
    assert!(eval["accuracy"].as_f64().unwrap() > 0.8, "{}", eval["accuracy"]);
    let (ok, text) = run(&[
        "eval",
        "--data",
        file.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ]);
    assert!(ok && text.contains("macro-F1") && text.contains("unknown"), "{text}");
    std::fs::remove_dir_all(&dir).ok();
}
