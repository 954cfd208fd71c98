//! The one `[kafka]` table as an operator meets it, through each service
//! binary's `--check-config`: security settings are read (file and
//! environment), secrets print as `***`, a property the service owns is
//! refused with the reason, a typo'd librdkafka name is refused, and the
//! old `kafka_bootstrap` key still works with a warning.

use std::path::{Path, PathBuf};
use std::process::Command;

use context_integration::unique;

/// The services' binaries this test run built (`<target>/debug`).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().and_then(Path::parent).expect("target/debug");
    let path = debug.join(name);
    assert!(
        path.exists(),
        "{} is missing: cargo test --workspace builds it",
        path.display()
    );
    path
}

/// Each service, its variable prefix, and keys it needs besides `[kafka]`.
const SERVICES: [(&str, &str, &str); 5] = [
    ("ingest-gateway", "INGEST_", ""),
    (
        "stream-router",
        "ROUTER_",
        concat!(
            "rules_file = \"",
            env!("CARGO_MANIFEST_DIR"),
            "/../stream-router/rules.toml\"\n"
        ),
    ),
    ("sink-clickhouse", "SINK_", ""),
    ("enrich-activity", "ENRICH_", "model = \"/dev/null\"\n"),
    ("schema-registry", "SCHEMA_REGISTRY_", ""),
];

fn check(bin: &str, file: &Path, env: &[(String, String)]) -> (i32, String) {
    let out = Command::new(binary(bin))
        .arg("--check-config")
        .arg(file)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn every_service_reads_the_kafka_table_hides_secrets_and_refuses_owned_settings() {
    let dir = std::env::temp_dir().join(unique("kafka_settings"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, "not checked before a connection\n").unwrap();
    for (bin, prefix, extra) in SERVICES {
        // A secured section, the password from the environment.
        let file = dir.join(format!("{bin}.toml"));
        std::fs::write(
            &file,
            format!(
                "{extra}[kafka]\nbootstrap = \"b-1.example:9096,b-2.example:9096\"\n\
                 security_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\n\
                 sasl_username = \"context\"\nssl_ca_file = \"{}\"\n\
                 [kafka.properties]\n\"socket.keepalive.enable\" = true\n",
                ca.display()
            ),
        )
        .unwrap();
        let secret = "p4ss-word-never-printed";
        let env = vec![(format!("{prefix}KAFKA_SASL_PASSWORD"), secret.to_owned())];
        let (code, text) = check(bin, &file, &env);
        assert_eq!(code, 0, "{bin}: {text}");
        for needle in [
            "SaslSsl",
            "ScramSha512",
            "b-1.example:9096",
            "socket.keepalive.enable",
            "\"***\"",
        ] {
            assert!(text.contains(needle), "{bin}: {needle} missing in\n{text}");
        }
        assert!(!text.contains(secret), "{bin} printed the password:\n{text}");

        // Without the password: named, not a connection attempt.
        let (code, text) = check(bin, &file, &[]);
        assert_eq!(code, 2, "{bin}: {text}");
        assert!(text.contains("kafka.sasl_password is required"), "{bin}: {text}");

        // A setting the service owns, and a name librdkafka does not know.
        let owned = dir.join(format!("{bin}-owned.toml"));
        std::fs::write(
            &owned,
            format!("{extra}[kafka.properties]\nacks = \"1\"\n\"enable.auto.commit\" = true\n"),
        )
        .unwrap();
        let (code, text) = check(bin, &owned, &[]);
        assert_eq!(code, 2, "{bin}: {text}");
        assert!(
            text.contains("kafka.properties.acks is refused") && text.contains("acks=all"),
            "{bin}: {text}"
        );
        assert!(
            text.contains("kafka.properties.enable.auto.commit is refused"),
            "{bin}: {text}"
        );
        let typo = dir.join(format!("{bin}-typo.toml"));
        std::fs::write(&typo, format!("{extra}[kafka.properties]\n\"linger.msec\" = 5\n")).unwrap();
        let (code, text) = check(bin, &typo, &[]);
        assert_eq!(code, 2, "{bin}: {text}");
        assert!(text.contains("linger.msec"), "{bin}: {text}");

        // The old key still works, with a warning.
        let old = dir.join(format!("{bin}-old.toml"));
        std::fs::write(&old, format!("kafka_bootstrap = \"old.example:9092\"\n{extra}")).unwrap();
        let (code, text) = check(bin, &old, &[]);
        assert_eq!(code, 0, "{bin}: {text}");
        assert!(
            text.contains("`kafka_bootstrap` is deprecated") && text.contains("old.example:9092"),
            "{bin}: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
