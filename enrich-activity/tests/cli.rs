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
        text.contains("cross-validated accuracy") && text.contains("true\\pred"),
        "{text}"
    );
    let (ok, _) = run(&["train", "--data", data, "--out", b.to_str().unwrap(), "--seed", "3"]);
    assert!(ok);
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let (ok, json) = run(&["eval", "--data", data, "--model", a.to_str().unwrap(), "--json"]);
    assert!(ok, "{json}");
    let eval: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(eval["windows"], 40);
    assert!(eval["accuracy"].as_f64().unwrap() >= 0.9, "{eval}");

    let (ok, err) = run(&["eval", "--data", "no-such.ts", "--model", a.to_str().unwrap()]);
    assert!(!ok && err.contains("no-such.ts"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
