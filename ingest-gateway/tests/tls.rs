//! With a certificate and key configured the gateway speaks TLS, HTTP/2 and
//! HTTP/1.1 (checked with curl, an independent client).

mod common;

use std::process::Command;

use common::{body, read_events, session, start};
use context_integration::unique;

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl").args(args).output().expect("curl is installed");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_http2_and_http11() {
    let dir = std::env::temp_dir().join(unique("tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let h = start(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    })
    .await;
    let url = format!("https://localhost:{}/v1/batch", h.gateway.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", h.gateway.addr.port());
    let auth = format!("Authorization: Bearer {}", h.key);
    let mut sent = Vec::new();
    for (version_flag, expected) in [("--http2", "2 200"), ("--http1.1", "1.1 200")] {
        let events = session(if expected.starts_with('2') { 80 } else { 81 }, 3);
        let file = dir.join(format!("{}.json", unique("body")));
        std::fs::write(&file, body(&events)).unwrap();
        let data = format!("@{}", file.display());
        let got = curl(&[
            "-s",
            version_flag,
            "--cacert",
            cert.to_str().unwrap(),
            "--resolve",
            &resolve,
            "-H",
            &auth,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &url,
        ]);
        assert_eq!(got, expected);
        sent.extend(events);
    }
    let stored = read_events(&h.events_topic, sent.len()).await;
    assert!(sent.iter().all(|e| stored.iter().any(|s| s.event_id == e.event_id)));
    // Plain HTTP is refused on a TLS listener.
    let plain = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://127.0.0.1:{}/healthz", h.gateway.addr.port()),
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
    std::fs::remove_dir_all(&dir).ok();
}
