//! Gzip bombs under the in-flight budget, against the gateway binary in its
//! own process: a body is charged what it inflates to (not 8 times what it
//! weighs), so 24 bombs of 30 MB sent at once cannot hold more than
//! `max_in_flight_bytes` of inflated bodies. The gateway's peak RSS stays
//! under the documented bound: 3 times `max_in_flight_bytes`, plus
//! `queue_max_kbytes`, plus 100 MiB. Every refusal is a 503 with
//! `Retry-After`, and each refused body, sent again, is accepted.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{key_entry, new_key, registry_url, session};
use context_integration::measure::memory_mib;
use context_integration::{create_topic, kafka_bootstrap, unique};
use ingest_gateway::sdk;

/// A valid batch of one event whose unknown field holds `pad` bytes of
/// zeros, gzipped: about a thousandth of its size.
fn bomb(seed: u64, pad: usize) -> Vec<u8> {
    let events = session(seed, 1);
    let mut json = sdk::batch_json(&events, common::now_micros());
    json["events"][0]["from_a_newer_sdk"] = serde_json::Value::String("0".repeat(pad));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(json.to_string().as_bytes()).unwrap();
    gz.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_bombs_are_charged_what_they_inflate_to() {
    let dir = std::env::temp_dir().join(unique("gw_memory"));
    std::fs::create_dir_all(&dir).unwrap();
    let (events_topic, deadletter_topic) = (unique("it_gw_mem_events"), unique("it_gw_mem_dead"));
    create_topic(&events_topic, 1).await.unwrap();
    create_topic(&deadletter_topic, 1).await.unwrap();
    let key = new_key(7);
    let keys = dir.join("keys.toml");
    std::fs::write(&keys, key_entry("app-mem", &key, true, 100_000.0, 100_000.0)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (in_flight_mib, queue_mib) = (64, 64);
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nkafka_bootstrap = \"{}\"\nregistry_url = \"{}\"\n\
             events_topic = \"{events_topic}\"\ndeadletter_topic = \"{deadletter_topic}\"\nkeys_file = \"{}\"\n\
             max_in_flight_bytes = {}\nqueue_max_kbytes = {}\n",
            kafka_bootstrap(),
            registry_url(),
            keys.display(),
            in_flight_mib << 20,
            queue_mib << 10
        ),
    )
    .unwrap();
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_ingest-gateway"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("gateway.log")).unwrap())
        .spawn()
        .expect("start ingest-gateway");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut ready = false;
    for _ in 0..120 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ready,
        "the gateway never got ready; see {}",
        dir.join("gateway.log").display()
    );

    let bodies: Vec<Vec<u8>> = (0..24).map(|i| bomb(900 + i, 30 << 20)).collect();
    assert!(bodies.iter().all(|b| b.len() < 200 << 10), "a bomb must weigh little");
    let post = |body: Vec<u8>| {
        let (http, url, key) = (http.clone(), format!("{base}/v1/batch"), key.clone());
        async move {
            let r = http
                .post(url)
                .bearer_auth(key)
                .header("Content-Type", "application/json")
                .header("Content-Encoding", "gzip")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.headers().contains_key("retry-after"))
        }
    };
    let answers = futures_util::future::join_all(bodies.iter().cloned().map(post)).await;
    let (_, peak_mib) = memory_mib(gateway.id()).expect("the gateway's /proc/<pid>/status");
    for (status, retry_after) in &answers {
        assert!(
            *status == 200 || (*status == 503 && *retry_after),
            "a bomb got {status}: only 200, or 503 with Retry-After, are right"
        );
    }
    // Every refused body is accepted when sent again, one at a time.
    for (body, (status, _)) in bodies.iter().zip(&answers) {
        if *status == 503 {
            let mut accepted = false;
            for _ in 0..20 {
                if post(body.clone()).await.0 == 200 {
                    accepted = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            assert!(accepted, "a refused bomb was never accepted");
        }
    }
    gateway.kill().unwrap();
    gateway.wait().unwrap();
    let refused = answers.iter().filter(|(s, _)| *s == 503).count();
    let bound_mib = (3 * in_flight_mib + queue_mib + 100) as f64;
    println!("24 bombs of 30 MB at once: {refused} refused with 503; gateway peak RSS {peak_mib:.0} MiB, bound {bound_mib:.0} MiB");
    assert!(
        peak_mib <= bound_mib,
        "the gateway's peak RSS {peak_mib:.0} MiB is above its documented bound {bound_mib:.0} MiB"
    );
}
