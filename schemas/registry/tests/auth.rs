//! The registry with a users file: 401 without or with wrong credentials
//! (with `WWW-Authenticate`), 403 for a role too low, the probes open,
//! anonymous reads when allowed, the file reloaded by content but never
//! swapped for an empty one, and Confluent's Python client with
//! `basic.auth.user.info` registering and reading.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{config, record, state_topic, url};
use context_integration::{repo_root, unique};
use context_runtime::config::{Secret, ServiceConfig};
use context_runtime::registry::RegistrySettings;
use schema_registry::auth::{hash_password, Anonymous, AuthSettings};
use schema_registry::{RegistryClient, RegistryError, Running};

const PASSWORDS: [(&str, &str, &str); 3] = [
    ("boss", "admin", "admin-pw-1"),
    ("svc", "write", "write-pw-2"),
    ("viewer", "read", "read-pw-3"),
];

fn users_file(dir: &Path, users: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = String::new();
    for (name, role, password) in users {
        text.push_str(&format!(
            "[[users]]\nname = \"{name}\"\nrole = \"{role}\"\npassword_hash = \"{}\"\n",
            hash_password(password).unwrap()
        ));
    }
    let path = dir.join("users.toml");
    std::fs::write(&path, text).unwrap();
    path
}

async fn start(users: &Path, anonymous: Anonymous) -> Running {
    let mut c = config(&state_topic().await);
    c.auth = AuthSettings {
        users_file: Some(users.to_owned()),
        anonymous,
    };
    let running = schema_registry::start(c.checked().unwrap(), None).await.unwrap();
    assert!(running.wait_ready(Duration::from_secs(30)).await);
    running
}

fn client_as(r: &Running, who: Option<(&str, &str)>) -> RegistryClient {
    RegistryClient::connect(&RegistrySettings {
        registry_username: who.map(|(u, _)| u.to_owned()),
        registry_password: Secret(who.map(|(_, p)| p.to_owned()).unwrap_or_default()),
        ..RegistrySettings::open(url(r))
    })
    .unwrap()
}

fn status(e: RegistryError) -> (u16, u32) {
    match e {
        RegistryError::Remote { status, code, .. } => (status, code),
        other => panic!("expected an answer of the registry, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_and_roles_are_enforced() {
    let dir = std::env::temp_dir().join(unique("registry_auth"));
    std::fs::create_dir_all(&dir).unwrap();
    let users = users_file(&dir, &PASSWORDS);
    let registry = start(&users, Anonymous::None).await;
    let subject = format!("{}-value", unique("it_auth"));
    let v1 = record("A", r#"{"name":"a","type":"string"}"#);

    // The probes need no credentials.
    let http = reqwest::Client::new();
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let r = http.get(format!("{}{probe}", url(&registry))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{probe}");
    }
    // Anonymous: 401 with WWW-Authenticate and Confluent's error body.
    let r = http
        .post(format!("{}/subjects/{subject}/versions", url(&registry)))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(serde_json::json!({ "schema": v1 }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error_code"], 40101, "{body}");
    let r = http.get(format!("{}/subjects", url(&registry))).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401, "anonymous reads are refused by default");

    // Wrong password, unknown user: 401.
    let wrong = client_as(&registry, Some(("svc", "nope")));
    assert_eq!(status(wrong.register(&subject, &v1).await.unwrap_err()).0, 401);
    let nobody = client_as(&registry, Some(("nobody", "write-pw-2")));
    assert_eq!(status(nobody.register(&subject, &v1).await.unwrap_err()).0, 401);

    // read: reads, cannot write (403).
    let reader = client_as(&registry, Some(("viewer", "read-pw-3")));
    assert_eq!(status(reader.register(&subject, &v1).await.unwrap_err()), (403, 40301));
    // write: registers and looks up, cannot change the config (403).
    let writer = client_as(&registry, Some(("svc", "write-pw-2")));
    let id = writer.register(&subject, &v1).await.unwrap();
    assert_eq!(writer.lookup(&subject, &v1).await.unwrap(), Some(id));
    reader.schema_by_id(id).await.expect("read may read");
    assert_eq!(
        status(writer.set_compatibility(&subject, "NONE").await.unwrap_err()).0,
        403,
        "write cannot weaken the compatibility guard"
    );
    let r = http
        .delete(format!("{}/subjects/{subject}", url(&registry)))
        .basic_auth("svc", Some("write-pw-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "write cannot delete");
    // admin: changes the config.
    let admin = client_as(&registry, Some(("boss", "admin-pw-1")));
    admin.set_compatibility(&subject, "FULL_TRANSITIVE").await.unwrap();

    // A rewrite of the file: truncated first (as cp does) is never swapped
    // in; the new users work once the content settled.
    std::fs::write(&users, "").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    writer
        .lookup(&subject, &v1)
        .await
        .expect("an empty users file is not swapped in");
    users_file(&dir, &[("svc", "write", "rotated-pw"), PASSWORDS[0]]);
    let rotated = client_as(&registry, Some(("svc", "rotated-pw")));
    let mut reloaded = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if rotated.lookup(&subject, &v1).await.is_ok() {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the rewritten users file was not loaded");
    assert_eq!(
        status(writer.lookup(&subject, &v1).await.unwrap_err()).0,
        401,
        "the old password is gone"
    );
    assert_eq!(
        status(reader.schema_by_id(id + 1000).await.unwrap_err()).0,
        401,
        "viewer was removed"
    );
    registry.stop().await.unwrap();

    // anonymous = "read": reads without credentials, writes still need them.
    let users = users_file(&dir, &PASSWORDS);
    let registry = start(&users, Anonymous::Read).await;
    let anyone = client_as(&registry, None);
    let subject = format!("{}-value", unique("it_auth"));
    assert_eq!(status(anyone.register(&subject, &v1).await.unwrap_err()).0, 401);
    let id = client_as(&registry, Some(("svc", "write-pw-2")))
        .register(&subject, &v1)
        .await
        .unwrap();
    anyone.schema_by_id(id).await.unwrap();
    registry.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn confluents_python_client_authenticates_with_basic_auth_user_info() {
    let python = std::env::var_os("CONTEXT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".stack/venv/bin/python"));
    assert!(
        python.exists(),
        "{} is missing: scripts/test installs it",
        python.display()
    );
    let dir = std::env::temp_dir().join(unique("registry_auth_py"));
    std::fs::create_dir_all(&dir).unwrap();
    let users = users_file(&dir, &PASSWORDS);
    let registry = start(&users, Anonymous::None).await;
    let script = r#"
import json, sys
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
url, subject = sys.argv[1], sys.argv[2]
schema = Schema(json.dumps({"type": "record", "name": "P", "fields": [{"name": "a", "type": "string"}]}), "AVRO")
writer = SchemaRegistryClient({"url": url, "basic.auth.user.info": "svc:write-pw-2"})
sid = writer.register_schema(subject, schema)
reader = SchemaRegistryClient({"url": url, "basic.auth.user.info": "viewer:read-pw-3"})
assert json.loads(reader.get_schema(sid).schema_str)["name"] == "P"
assert reader.get_latest_version(subject).schema_id == sid
try:
    reader.register_schema(subject + "-other", schema)
    sys.exit("a read-only user registered a schema")
except SchemaRegistryError as e:
    assert e.http_status_code == 403, e.http_status_code
try:
    SchemaRegistryClient({"url": url}).get_subjects()
    sys.exit("an anonymous client listed subjects")
except SchemaRegistryError as e:
    assert e.http_status_code == 401, e.http_status_code
print("ok", sid)
"#;
    let subject = format!("{}-value", unique("it_auth_py"));
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(url(&registry))
        .arg(&subject)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.starts_with("ok "), "{text}");
    registry.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
