//! What one key holder can make the gateway hold or claim, against the real
//! broker and schema registry: echoed input is clipped, a `batch_id` reused
//! for another body is answered 409 (never with the first body's counts),
//! a body is charged to the in-flight budget before it is read, may pause
//! for at most `body_read_timeout` and must arrive within 4 times that, an app is limited in bytes as well as
//! events, and a dead letter larger than its topic takes is stored as a
//! stub instead of failing its batch for ever.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{body, count, read_events, read_raw, session, start};
use context_integration::{create_topic_with, unique};
use ingest_gateway::sdk;
use ingest_gateway::validate::{ELLIPSIS, MAX_DETAIL_BYTES, MAX_QUOTED_BYTES};
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use serde_json::json;

/// `len` characters of a 64-letter alphabet drawn by xorshift: six bits of
/// entropy each, so zstd cannot shrink them much (the broker compares the
/// compressed batch with `max.message.bytes`).
fn noise(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x >> 58) as usize])
        })
        .collect()
}

/// A batch of `n` events whose second is rejected (`invalid_event_id`)
/// and carries `pad` bytes of noise in a field of a newer SDK; with the
/// rejected event's JSON as the body holds it (the dead letter's value).
fn with_big_reject(seed: u64, n: usize, pad: usize) -> (serde_json::Value, String) {
    let mut json = sdk::batch_json(&session(seed, n), common::now_micros());
    json["events"][1]["event_id"] = json!("not-a-uuid");
    json["events"][1]["from_a_newer_sdk"] = json!(noise(pad, seed));
    let raw = json["events"][1].to_string();
    (json, raw)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The head of a `POST /v1/batch` with `key`, announcing `length` bytes.
fn head(key: &str, length: usize) -> String {
    format!(
        "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// Everything the gateway answers on `stream` until it closes it (it does
/// after answering a request whose body it did not read), lower-cased.
fn answer_of(mut stream: TcpStream) -> String {
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread")]
async fn input_echoed_in_an_answer_is_clipped() {
    let h = start(|_| {}).await;
    let events = session(1501, 3);
    let mut json = sdk::batch_json(&events, common::now_micros());
    let huge_id = "e".repeat(100_000);
    json["events"][0]["event_id"] = json!(huge_id);
    json["events"][2]["timestamp"] = json!("t".repeat(100_000));
    let (status, _, answer) = h.post(Some(&h.key), json.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    let id = rejected[0]["event_id"].as_str().unwrap();
    assert!(
        id.len() <= MAX_QUOTED_BYTES && id.starts_with("eee") && id.ends_with(ELLIPSIS),
        "an event_id of 100 KB is echoed as {} bytes",
        id.len()
    );
    assert_eq!(rejected[0]["reason"], "invalid_event_id");
    assert_eq!(rejected[1]["reason"], "invalid_timestamp");
    assert_eq!(
        rejected[1]["event_id"],
        events[2].event_id.to_string(),
        "a UUID is never cut"
    );
    for r in rejected {
        let detail = r["detail"].as_str().unwrap();
        assert!(detail.len() <= MAX_DETAIL_BYTES, "a detail of {} bytes", detail.len());
        assert!(
            !detail.contains(&"e".repeat(200)) && !detail.contains(&"t".repeat(200)),
            "{detail}"
        );
    }
    assert!(
        answer.to_string().len() < 2048,
        "two rejections answered in {} bytes",
        answer.to_string().len()
    );

    // The dead letters keep the events whole; their headers are clipped too.
    let dead = read_raw(&h.deadletter_topic, 2).await;
    for (_, value, headers) in &dead {
        assert!(header(headers, "dl.event_id").is_some_and(|id| id.len() <= MAX_QUOTED_BYTES));
        assert!(header(headers, "dl.detail").is_some_and(|d| d.len() <= MAX_DETAIL_BYTES));
        assert!(value.len() > 100_000, "the value is the event as sent");
    }
    assert!(dead
        .iter()
        .any(|(_, value, _)| String::from_utf8_lossy(value).contains(&huge_id)));
}

/// A reused `batch_id` with another body: before, the first answer came
/// back (200 with its counts) and the phone deleted events never produced.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_id_reused_for_another_body_is_answered_409_and_nothing_of_it_is_claimed() {
    let h = start(|_| {}).await;
    let first = session(1301, 3);
    let first_body = body(&first);
    let (status, _, first_answer) = h.post(Some(&h.key), first_body.clone(), &[]).await;
    assert_eq!(status, 200, "{first_answer}");
    assert_eq!(first_answer["accepted"], 3);

    // Other events under the same batch_id (an SDK that reuses ids).
    let second = session(1302, 4);
    let mut reused: serde_json::Value = serde_json::from_slice(&body(&second)).unwrap();
    reused["batch_id"] = json!(first[0].batch_id.to_string());
    let (status, retry_after, answer) = h.post(Some(&h.key), reused.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "batch_id_reused", "{answer}");
    assert!(answer.get("accepted").is_none(), "no counts are claimed: {answer}");
    assert!(answer["message"].as_str().unwrap().contains("new batch_id"), "{answer}");
    let wait: u64 = retry_after
        .expect("a 409 says when the first answer is forgotten")
        .parse()
        .unwrap();
    assert!((1..=600).contains(&wait), "{wait}");

    // The first body again: its own answer, from memory.
    let (status, _, again) = h.post(Some(&h.key), first_body, &[]).await;
    assert_eq!((status, &again), (200, &first_answer));

    // Only the first body's events were produced.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&h.events_topic), 3);
    let stored = read_events(&h.events_topic, 3).await;
    for e in &second {
        assert!(stored.iter().all(|s| s.event_id != e.event_id), "{} stored", e.event_id);
    }
}

/// Before, the body was read to its end with no deadline: a client sending
/// a few bytes now and then held a request open for ever.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_slower_than_body_read_timeout_is_answered_retry() {
    let h = start(|c| c.body_read_timeout = Duration::from_secs(2)).await;
    let json = body(&session(1201, 3));
    let (addr, key) = (h.gateway.addr, h.key.clone());
    let text = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(head(&key, json.len()).as_bytes()).unwrap();
        // A few bytes at a time, then nothing more: the body never ends.
        for part in json[..json.len() / 2].chunks(64).take(5) {
            stream.write_all(part).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
        answer_of(stream)
    })
    .await
    .unwrap();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.contains("body_read_timeout"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&h.events_topic), 0, "a body never read whole produced events");
    // The same batch, sent at once, is taken.
    let (status, _, answer) = h.post(Some(&h.key), body(&session(1201, 3)), &[]).await;
    assert_eq!(status, 200, "{answer}");
}

/// A phone on a slow link sends its body in parts with pauses shorter than
/// `body_read_timeout`: it is taken, however long the whole takes within
/// the deadline (4 x the timeout). One that keeps trickling past that
/// deadline, never pausing long enough to trip the pause, is answered 503.
/// Before, `body_read_timeout` bounded the whole body: a slow link that
/// needed longer than it got 503 on every attempt and never delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_steady_body_is_taken_and_an_endless_trickle_is_not() {
    let h = start(|c| c.body_read_timeout = Duration::from_secs(2)).await;
    let send = |json: Vec<u8>, pause: Duration, parts: usize| {
        let (addr, key) = (h.gateway.addr, h.key.clone());
        tokio::task::spawn_blocking(move || {
            let mut stream = TcpStream::connect(addr).unwrap();
            let head = head(&key, json.len()).replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
            stream.write_all(head.as_bytes()).unwrap();
            let size = json.len().div_ceil(parts);
            for part in json.chunks(size) {
                std::thread::sleep(pause);
                if stream.write_all(part).is_err() {
                    break;
                }
            }
            answer_of(stream)
        })
    };
    // 4 parts 1.2 s apart: 4.8 s in all, more than the 2 s pause allowed.
    let text = send(body(&session(1301, 3)), Duration::from_millis(1200), 4)
        .await
        .unwrap();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    // 12 parts 1 s apart: never a 2 s pause, but past the 8 s deadline.
    let text = send(body(&session(1302, 3)), Duration::from_millis(1000), 12)
        .await
        .unwrap();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.contains("body_read_timeout"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&h.events_topic), 3, "only the steady body's events");
}

/// Before, a body was read whole into memory and only then charged to
/// `max_in_flight_bytes`: bodies announced but not yet sent cost nothing.
#[tokio::test(flavor = "multi_thread")]
async fn the_in_flight_budget_is_charged_before_the_body_is_read() {
    let mib = 1 << 20;
    let h = start(|c| {
        c.limits.max_body_bytes = mib;
        c.limits.max_decompressed_bytes = mib;
        c.max_in_flight_bytes = mib;
        c.body_read_timeout = Duration::from_secs(120);
    })
    .await;
    // One request announces the whole budget and sends a few bytes.
    let mut holder = TcpStream::connect(h.gateway.addr).unwrap();
    holder.write_all(head(&h.key, mib).as_bytes()).unwrap();
    holder.write_all(b"{\"batch_id\":").unwrap();
    let mut charged = false;
    for _ in 0..100 {
        if h.gateway.gateway.bytes_in_flight() >= mib {
            charged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(charged, "the announced body was not charged before it arrived");

    // Another is refused at once, before it sends its body.
    let json = body(&session(1101, 3));
    let (addr, key, length) = (h.gateway.addr, h.key.clone(), json.len());
    let text = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(head(&key, length).as_bytes()).unwrap();
        answer_of(stream)
    })
    .await
    .unwrap();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    assert!(text.contains("\"busy\""), "{text}");

    // The holder goes away: its charge is given back, and the batch is taken.
    drop(holder);
    let mut released = false;
    for _ in 0..100 {
        if h.gateway.gateway.bytes_in_flight() == 0 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "a request cut off kept its charge");
    let (status, _, answer) = h.post(Some(&h.key), json, &[]).await;
    assert_eq!(status, 200, "{answer}");
}

/// Before, only events were counted: one-event batches of any size passed.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_over_its_byte_rate_is_answered_429() {
    let h = start(|c| {
        c.rate_limit_bytes_per_s = 1000;
        c.rate_limit_burst_bytes = 1000;
    })
    .await;
    let first = body(&session(1401, 2));
    assert!(first.len() > 1000, "a batch of {} bytes", first.len());
    // A full bucket lets one batch larger than the burst through.
    let (status, _, answer) = h.post(Some(&h.key), first, &[]).await;
    assert_eq!(status, 200, "{answer}");
    let (status, retry_after, answer) = h.post(Some(&h.key), body(&session(1402, 1)), &[]).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(answer["error"], "rate_limited", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("bytes/s"), "{answer}");
    let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(wait >= 1, "{wait}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&h.events_topic), 2, "the refused batch was not produced");
}

/// Before, a dead letter over the dead-letter topic's `max.message.bytes`
/// answered its whole batch 500 on every attempt.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_over_the_topics_limit_is_stored_as_a_stub() {
    let dead = unique("it_gw_dead_small");
    create_topic_with(&dead, 1, &[("max.message.bytes", "200000")])
        .await
        .unwrap();
    let topic = dead.clone();
    let h = start(move |c| c.deadletter_topic = topic).await;
    let (json, raw) = with_big_reject(1601, 3, 400_000);
    let (status, _, answer) = h.post(Some(&h.key), json.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["rejected"][0]["reason"], "invalid_event_id", "{answer}");
    assert_eq!(count(&h.events_topic), 2);

    let letters = read_raw(&dead, 1).await;
    let (key, value, headers) = &letters[0];
    assert_eq!(header(headers, "dl.truncated"), Some(raw.len().to_string().as_str()));
    assert!(value.len() < 200_000, "a stub of {} bytes", value.len());
    assert!(raw.as_bytes().starts_with(value), "the stub is the event's first bytes");
    assert_eq!(header(headers, "dl.source"), Some("ingest-gateway"));
    assert_eq!(header(headers, "dl.reason"), Some("invalid_event_id"));
    assert_eq!(header(headers, "dl.event_id"), Some("not-a-uuid"));
    assert_eq!(header(headers, "dl.app_id"), Some("app-ok"));
    assert!(header(headers, "dl.batch_id").is_some() && header(headers, "dl.envelope").is_some());
    assert_eq!(key, json["device"]["install_id"].as_str().unwrap().as_bytes());
}

/// The topic's limit lowered after the gateway read it: the broker refuses
/// the dead letter, which is sent again as a stub.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_the_broker_refuses_for_its_size_is_stored_as_a_stub() {
    let dead = unique("it_gw_dead_shrinks");
    create_topic_with(&dead, 1, &[("max.message.bytes", "2000000")])
        .await
        .unwrap();
    let topic = dead.clone();
    let h = start(move |c| c.deadletter_topic = topic).await;

    let admin: AdminClient<DefaultClientContext> = context_integration::base_config().create().unwrap();
    let lower = AlterConfig::new(ResourceSpecifier::Topic(&dead)).set("max.message.bytes", "200000");
    let results = admin
        .alter_configs(
            [&lower],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
    for r in results {
        r.unwrap();
    }
    // Until the broker refuses a record of that size itself.
    let producer = context_integration::producer().unwrap();
    let probe = noise(400_000, 7);
    let mut enforced = false;
    for _ in 0..60 {
        let sent = producer
            .send(
                FutureRecord::to(&dead).key("probe").payload(probe.as_str()),
                Duration::from_secs(10),
            )
            .await;
        match sent {
            Ok(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err((e, _)) => {
                assert_eq!(
                    e.rdkafka_error_code(),
                    Some(RDKafkaErrorCode::MessageSizeTooLarge),
                    "{e}"
                );
                enforced = true;
                break;
            }
        }
    }
    assert!(enforced, "the broker never applied the lower max.message.bytes");

    let (json, raw) = with_big_reject(1701, 3, 400_000);
    let (status, _, answer) = h.post(Some(&h.key), json.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(count(&h.events_topic), 2);

    // The topic holds the probes that passed before the change, then the stub.
    let c: StreamConsumer = context_integration::consumer(&unique("it_gw_stub_reader")).unwrap();
    c.subscribe(&[dead.as_str()]).unwrap();
    let stub = loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .expect("no dead letter from the gateway")
            .unwrap();
        let headers = common::headers_of(&msg);
        if header(&headers, "dl.source") == Some("ingest-gateway") {
            break (msg.payload().unwrap_or_default().to_vec(), headers);
        }
    };
    let (value, headers) = stub;
    assert_eq!(header(&headers, "dl.truncated"), Some(raw.len().to_string().as_str()));
    assert!(
        value.len() <= context_runtime::pipeline::STUB_BYTES,
        "a stub of {} bytes",
        value.len()
    );
    assert!(raw.as_bytes().starts_with(&value));
    assert_eq!(header(&headers, "dl.reason"), Some("invalid_event_id"));
    assert_eq!(header(&headers, "dl.event_id"), Some("not-a-uuid"));
}
