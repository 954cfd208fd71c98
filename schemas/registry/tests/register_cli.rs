//! `schema-registry register`: registers the contract, and refuses a breaking
//! change with a message that names the field.

mod common;

use std::process::Command;

use common::{start_registry, state_topic, url};
use context_integration::{repo_root, unique};

fn register(registry_url: &str, dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_schema-registry"))
        .args(["register", "--url", registry_url, "--dir"])
        .arg(dir)
        .args(["--compatibility", "FULL_TRANSITIVE"])
        .output()
        .expect("run schema-registry register");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn register_accepts_the_contract_and_refuses_a_breaking_change() {
    let registry = start_registry(&state_topic().await).await;
    let base = url(&registry);

    let (ok, text) = register(&base, &repo_root().join("schemas/avro"));
    assert!(ok, "{text}");
    assert_eq!(text.matches(": id ").count(), 4, "{text}");
    // Idempotent: the same files again keep their ids.
    let (ok, again) = register(&base, &repo_root().join("schemas/avro"));
    assert!(ok, "{again}");
    assert_eq!(text, again);

    // A copy of the contract where a signal changes type is refused.
    let dir = std::env::temp_dir().join(unique("contract"));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(repo_root().join("schemas/avro")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if path.ends_with("context_event.avsc") {
            let before = text.clone();
            text = text.replacen(
                r#""name": "battery_level", "type": ["null", "double"]"#,
                r#""name": "battery_level", "type": ["null", "string"]"#,
                1,
            );
            assert_ne!(before, text, "the edit must apply");
        }
        std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
    }
    let (ok, text) = register(&base, &dir);
    assert!(!ok, "a breaking change was accepted:\n{text}");
    assert!(
        text.contains("INCOMPATIBLE") && text.contains("signals.battery.battery_level"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
    registry.stop().await.unwrap();
}
