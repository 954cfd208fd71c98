//! `POST /v1/batch` against the real broker and schema registry: every answer
//! of the contract produced by a real scenario, and every accepted event read
//! back from Kafka and decoded into what the client sent.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{body, count, key_entry, new_key, read_events, read_raw, session, start};
use context_schemas::{ContextEvent, SignalValue};
use ingest_gateway::sdk;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// What the gateway should have stored for a sent event.
fn assert_normalised(sent: &ContextEvent, stored: &ContextEvent) {
    assert_eq!(stored.app_id, "app-ok", "the app comes from the key");
    assert_eq!(stored.event_id, sent.event_id);
    assert_eq!(
        (stored.batch_id, stored.session_id, stored.install_id),
        (sent.batch_id, sent.session_id, sent.install_id)
    );
    assert_eq!((&stored.sdk, &stored.device), (&sent.sdk, &sent.device));
    assert_eq!(stored.client_timestamp, sent.client_timestamp);
    assert_eq!(
        stored.timestamp,
        ContextEvent::corrected_timestamp(stored.client_timestamp, stored.sent_at, stored.received_at)
    );
    assert!(stored.received_at >= stored.sent_at - 60_000_000);
    assert_eq!(stored.signals, sent.signals);
    assert_eq!(stored.motion, sent.motion);
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_events_are_in_kafka_exactly_as_sent_in_every_encoding() {
    let h = start(|_| {}).await;
    let mut sent = Vec::new();
    for (i, encoding) in ["identity", "gzip", "zstd"].into_iter().enumerate() {
        let events = session(10 + i as u64, 20);
        let json = body(&events);
        let (payload, headers): (Vec<u8>, Vec<(&str, &str)>) = match encoding {
            "gzip" => (gzip(&json), vec![("Content-Encoding", "gzip")]),
            "zstd" => (
                zstd::encode_all(&json[..], 3).unwrap(),
                vec![("Content-Encoding", "zstd")],
            ),
            _ => (json, vec![]),
        };
        let (status, _, answer) = h.post(Some(&h.key), payload, &headers).await;
        assert_eq!(status, 200, "{encoding}: {answer}");
        assert_eq!(
            answer,
            serde_json::json!({"accepted": 20, "rejected": []}),
            "{encoding}"
        );
        sent.extend(events);
    }
    let stored = read_events(&h.events_topic, sent.len()).await;
    for s in &sent {
        let st = stored
            .iter()
            .find(|e| e.event_id == s.event_id)
            .expect("every accepted event is in Kafka");
        assert_normalised(s, st);
    }
    // keyed by install id
    let raw = read_raw(&h.events_topic, 1).await;
    assert!(sent
        .iter()
        .any(|e| e.install_id.to_string().as_bytes() == raw[0].0.as_slice()));
}

#[tokio::test(flavor = "multi_thread")]
async fn some_invalid_events_go_to_the_dead_letter_topic_and_the_rest_is_accepted() {
    let h = start(|_| {}).await;
    let events = session(30, 5);
    let mut json = sdk::batch_json(&events, common::now_micros());
    json["events"][1]["signals"]["battery_level"] = serde_json::json!(7.5);
    json["events"][3]["event_id"] = serde_json::json!("not-a-uuid");
    json["events"][4]["signals"]["a_signal_from_a_newer_sdk"] = serde_json::json!(1);
    let (status, _, answer) = h.post(Some(&h.key), json.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 3);
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2);
    assert_eq!(
        (rejected[0]["index"].as_u64(), rejected[0]["reason"].as_str()),
        (Some(1), Some("signal_out_of_range"))
    );
    assert_eq!(rejected[0]["event_id"], events[1].event_id.to_string());
    assert_eq!(
        (rejected[1]["index"].as_u64(), rejected[1]["reason"].as_str()),
        (Some(3), Some("invalid_event_id"))
    );

    let stored = read_events(&h.events_topic, 3).await;
    let mut ids: Vec<_> = stored.iter().map(|e| e.event_id).collect();
    ids.sort();
    let mut want = vec![events[0].event_id, events[2].event_id, events[4].event_id];
    want.sort();
    assert_eq!(ids, want);
    // the unknown signal was dropped, the known ones kept
    let e4 = stored.iter().find(|e| e.event_id == events[4].event_id).unwrap();
    assert_eq!(e4.signals, events[4].signals);

    let dead = read_raw(&h.deadletter_topic, 2).await;
    for (key, value, headers) in &dead {
        assert_eq!(key, events[0].install_id.to_string().as_bytes());
        let original: serde_json::Value = serde_json::from_slice(value).unwrap();
        let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(header("dl.source").as_deref(), Some("ingest-gateway"));
        assert_eq!(header("dl.app_id").as_deref(), Some("app-ok"));
        assert!(header("dl.time").is_some() && header("dl.detail").is_some());
        match header("dl.reason").as_deref() {
            Some("signal_out_of_range") => assert_eq!(original["signals"]["battery_level"], 7.5),
            Some("invalid_event_id") => assert_eq!(original["event_id"], "not-a-uuid"),
            other => panic!("unexpected reason {other:?}"),
        }
    }
    assert_eq!(count(&h.events_topic), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refusal_of_the_contract_has_its_status() {
    let h = start(|c| {
        c.limits.max_events = 50;
        c.limits.max_decompressed_bytes = 1 << 20;
        c.limits.max_body_bytes = 512 << 10;
    })
    .await;
    let good = body(&session(40, 3));

    // 400: not a batch
    let (s, _, a) = h.post(Some(&h.key), b"{not json".to_vec(), &[]).await;
    assert_eq!((s, a["error"].as_str()), (400, Some("not_a_batch")));
    let (s, _, a) = h.post(Some(&h.key), br#"{"events": []}"#.to_vec(), &[]).await;
    assert_eq!(s, 400, "{a}");
    let mut bad_envelope: serde_json::Value = serde_json::from_slice(&good).unwrap();
    bad_envelope["session_id"] = serde_json::json!("nope");
    let (s, _, a) = h.post(Some(&h.key), bad_envelope.to_string().into_bytes(), &[]).await;
    assert_eq!(s, 400);
    assert!(a["message"].as_str().unwrap().contains("session_id"), "{a}");
    let (s, _, _) = h
        .post(
            Some(&h.key),
            b"definitely not gzip".to_vec(),
            &[("Content-Encoding", "gzip")],
        )
        .await;
    assert_eq!(s, 400);

    // 401 / 403
    assert_eq!(h.post(None, good.clone(), &[]).await.0, 401);
    assert_eq!(h.post(Some("ck_unknown"), good.clone(), &[]).await.0, 401);
    assert_eq!(h.post(Some(&h.disabled_key), good.clone(), &[]).await.0, 403);

    // 413: a 1 KB body that inflates past the limit, too many events, too big a body
    let bomb = gzip(&vec![b' '; 8 << 20]);
    assert!(bomb.len() < 16 << 10, "bomb is {} bytes", bomb.len());
    let (s, _, a) = h.post(Some(&h.key), bomb, &[("Content-Encoding", "gzip")]).await;
    assert_eq!((s, a["error"].as_str()), (413, Some("too_large")), "{a}");
    let (s, _, _) = h.post(Some(&h.key), body(&session(41, 51)), &[]).await;
    assert_eq!(s, 413);
    let (s, _, _) = h.post(Some(&h.key), vec![b' '; 600 << 10], &[]).await;
    assert_eq!(s, 413);

    // 415
    let resp = h
        .http
        .post(format!("{}/v1/batch", h.base))
        .header("Authorization", format!("Bearer {}", h.key))
        .header("Content-Type", "text/plain")
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    assert_eq!(
        h.post(Some(&h.key), good.clone(), &[("Content-Encoding", "br")])
            .await
            .0,
        415
    );

    // 429 with Retry-After for an app over its limit (1 event/s, burst 5)
    let slow = |seed| {
        let mut events = session(seed, 4);
        for e in &mut events {
            e.app_id = "app-slow".into();
        }
        body(&events)
    };
    assert_eq!(h.post(Some(&h.slow_key), slow(42), &[]).await.0, 200);
    let (s, retry_after, _) = h.post(Some(&h.slow_key), slow(43), &[]).await;
    assert_eq!(s, 429);
    let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=5).contains(&wait), "{wait}");

    // Nothing refused reached Kafka: only the 4 accepted slow-app events.
    assert_eq!(h.post(Some(&h.key), good, &[]).await.0, 200);
    assert_eq!(count(&h.events_topic), 4 + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_batch_is_answered_without_producing_twice() {
    let h = start(|_| {}).await;
    let json = body(&session(50, 10));
    let first = h.post(Some(&h.key), json.clone(), &[]).await;
    let second = h.post(Some(&h.key), json, &[]).await;
    assert_eq!((first.0, second.0), (200, 200));
    assert_eq!(first.2, second.2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&h.events_topic), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn operational_endpoints_and_key_reload() {
    let h = start(|_| {}).await;
    assert_eq!(h.get("/healthz").await.0, 200);
    assert_eq!(h.get("/readyz").await.0, 200);
    let (s, doc) = h.get("/openapi.json").await;
    assert_eq!(s, 200);
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["paths"]["/v1/batch"]["post"]["responses"]["503"].is_object());
    assert_eq!(
        doc["components"]["schemas"]["Signals"]["properties"]
            .as_object()
            .unwrap()
            .len(),
        context_schemas::catalog().len()
    );

    // A key added to the file works without a restart.
    let fresh = new_key(9);
    assert_eq!(h.post(Some(&fresh), body(&session(60, 1)), &[]).await.0, 401);
    let mut file = std::fs::OpenOptions::new().append(true).open(&h.keys_file).unwrap();
    file.write_all(key_entry("app-ok", &fresh, true, 100.0, 100.0).as_bytes())
        .unwrap();
    drop(file);
    let mut status = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        status = h.post(Some(&fresh), body(&session(61, 1)), &[]).await.0;
        if status == 200 {
            break;
        }
    }
    assert_eq!(status, 200, "the new key was never picked up");
    // A broken file keeps the keys in use.
    std::fs::write(&h.keys_file, "this is not toml [[").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.post(Some(&fresh), body(&session(62, 1)), &[]).await.0, 200);
    // Truncated, as `cp new keys.toml` leaves it before it writes: an empty
    // ring would answer 401 (which the phone never retries) to every app.
    std::fs::write(&h.keys_file, "").unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.post(Some(&fresh), body(&session(63, 1)), &[]).await.0, 200);
    assert_eq!(h.post(Some(&h.key), body(&session(64, 1)), &[]).await.0, 200);
    let signal = context_schemas::sample::event(1, &Default::default());
    assert!(matches!(
        signal.signals.get("battery_level"),
        Some(SignalValue::Double(_))
    ));
}

/// A newer SDK adds fields to `sdk`, to each event and to its motion: they
/// are skipped and counted, and every event is stored as before. A body
/// compressed as a multi-member gzip stream is read whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_newer_sdks_extra_fields_and_multi_member_gzip_are_accepted() {
    let h = start(|_| {}).await;
    let events = session(90, 10);
    let mut json: serde_json::Value = serde_json::from_slice(&body(&events)).unwrap();
    json["sdk"]["build"] = serde_json::json!("4.3.0-b17");
    for (i, e) in json["events"].as_array_mut().unwrap().iter_mut().enumerate() {
        e["screen_scale_hint"] = serde_json::json!({"nested": [1, 2, 3]});
        if let Some(m) = e.get_mut("motion").filter(|m| m.is_object()) {
            m["magnetometer"] = serde_json::json!([[0.1, 0.2, 0.3]]);
            m["sensor_clock"] = serde_json::json!(i);
        }
    }
    let text = serde_json::to_vec(&json).unwrap();
    let (status, _, answer) = h.post(Some(&h.key), text.clone(), &[]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"accepted": 10, "rejected": []}));

    // The same session as two gzip members (as `cat a.gz b.gz` makes).
    let more = session(91, 10);
    let text = body(&more);
    let cut = text.len() / 2;
    let mut two = gzip(&text[..cut]);
    two.extend(gzip(&text[cut..]));
    let (status, _, answer) = h.post(Some(&h.key), two, &[("Content-Encoding", "gzip")]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer, serde_json::json!({"accepted": 10, "rejected": []}));

    let stored = read_events(&h.events_topic, 20).await;
    for s in events.iter().chain(more.iter()) {
        let st = stored
            .iter()
            .find(|e| e.event_id == s.event_id)
            .expect("every accepted event is in Kafka");
        assert_normalised(s, st);
    }
}

/// The envelope is copied into every event: a 3.7 MB `device` field with a
/// thousand tiny events (tried: three such bodies at once drove the gateway
/// to a 10 GB peak) is refused with 413 naming the field, and so are too
/// many device facts; the gateway goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_envelope_is_refused_before_it_is_copied_into_events() {
    let h = start(|_| {}).await;
    let events = session(95, 1000);
    let mut json: serde_json::Value = serde_json::from_slice(&body(&events)).unwrap();
    for e in json["events"].as_array_mut().unwrap() {
        // tiny events: no signals, no motion
        e["signals"] = serde_json::json!({});
        e.as_object_mut().unwrap().remove("motion");
    }
    json["device"]["model"] = serde_json::json!("x".repeat(3_700_000));
    let hostile = serde_json::to_vec(&json).unwrap();
    let requests = (0..3).map(|_| h.post(Some(&h.key), hostile.clone(), &[]));
    for (status, _, answer) in futures_util::future::join_all(requests).await {
        assert_eq!(status, 413, "{answer}");
        assert!(answer["message"].as_str().unwrap().contains("device.model"), "{answer}");
    }

    let mut many: serde_json::Value = serde_json::from_slice(&body(&session(96, 2))).unwrap();
    for i in 0..40 {
        many["device"][format!("fact_{i}")] = serde_json::json!(i);
    }
    let (status, _, answer) = h.post(Some(&h.key), serde_json::to_vec(&many).unwrap(), &[]).await;
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("further facts"),
        "{answer}"
    );

    // Still serving.
    let (status, _, answer) = h.post(Some(&h.key), body(&session(97, 5)), &[]).await;
    assert_eq!(status, 200, "{answer}");
}

/// An event too large for a Kafka record is a per-event reject
/// (`event_too_large`), dead-lettered whole; the rest of the batch is stored
/// and the answer is 200, not a 503 the client would retry forever.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_too_large_for_kafka_is_rejected_and_dead_lettered_whole() {
    // Samples allowed up to 60,000 per sensor: one such event is ~1.4 MB of Avro.
    let h = start(|c| c.limits.max_samples = 60_000).await;
    let mut events = session(98, 4);
    let big = {
        let samples: Vec<[f32; 3]> = (0..60_000).map(|i| [i as f32 * 1e-4, -0.98, 0.12]).collect();
        let motion = events[1].motion.as_mut().expect("sample events carry motion");
        motion.accelerometer = context_schemas::Axes3::from_samples(&samples);
        motion.gyroscope = context_schemas::Axes3::from_samples(&samples);
        events[1].event_id
    };
    let gzipped = gzip(&body(&events));
    let (status, _, answer) = h.post(Some(&h.key), gzipped, &[("Content-Encoding", "gzip")]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 3, "{answer}");
    assert_eq!(answer["rejected"][0]["reason"], "event_too_large", "{answer}");
    assert_eq!(answer["rejected"][0]["event_id"], big.to_string());
    let stored = read_events(&h.events_topic, 3).await;
    assert!(stored.iter().all(|e| e.event_id != big));
    let dead = read_raw(&h.deadletter_topic, 1).await;
    let raw: serde_json::Value = serde_json::from_slice(&dead[0].1).unwrap();
    assert_eq!(
        raw["event_id"],
        big.to_string(),
        "the dead letter is the event's whole JSON"
    );
    assert_eq!(raw["motion"]["accelerometer"].as_array().unwrap().len(), 60_000);
}

/// One session captured at `captured` (device clock right), its body built
/// (and its `sent_at` stamped) five seconds later.
fn session_at(seed: u64, n: usize, captured: i64) -> (Vec<ContextEvent>, Vec<u8>) {
    let events: Vec<ContextEvent> = session(seed, n)
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.client_timestamp = captured + i as i64 * 1_000_000;
            e
        })
        .collect();
    let body = sdk::batch_json(&events, captured + 5_000_000).to_string().into_bytes();
    (events, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_resent_hours_later_with_a_fresh_x_sent_at_keeps_its_capture_times() {
    let h = start(|_| {}).await;
    let now = common::now_micros();
    let two_hours = 2 * 3600 * 1_000_000i64;

    // Built two hours ago, kept on the phone, resent unchanged now with the
    // time of this attempt in X-Sent-At.
    let (kept, body_kept) = session_at(801, 5, now - two_hours);
    let sent_now = sdk::rfc3339(common::now_micros());
    let (status, _, answer) = h.post(Some(&h.key), body_kept, &[("X-Sent-At", &sent_now)]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 5);

    // The same kind of body without the header: its age is taken for skew.
    let (shifted, body_shifted) = session_at(802, 5, now - two_hours);
    let (status, _, _) = h.post(Some(&h.key), body_shifted, &[]).await;
    assert_eq!(status, 200);

    // Forty days old and sent now: stored, flagged, not dead-lettered.
    let (old, body_old) = session_at(803, 2, now - 40 * 86_400 * 1_000_000);
    let sent_now = sdk::rfc3339(common::now_micros());
    let (status, _, answer) = h.post(Some(&h.key), body_old, &[("X-Sent-At", &sent_now)]).await;
    assert_eq!(status, 200);
    assert_eq!(answer, serde_json::json!({"accepted": 2, "rejected": []}));

    let stored = read_events(&h.events_topic, 12).await;
    let find = |e: &ContextEvent| stored.iter().find(|s| s.event_id == e.event_id).unwrap().clone();
    for e in &kept {
        let s = find(e);
        assert_eq!(s.client_timestamp, e.client_timestamp, "the raw capture time is kept");
        let drift = (s.timestamp - e.client_timestamp).abs();
        assert!(
            drift < 60_000_000,
            "captured two hours ago, stored as such (off by {drift} µs)"
        );
        assert!(!s.time_suspect);
    }
    for e in &shifted {
        let s = find(e);
        let shift = s.timestamp - e.client_timestamp;
        assert!(
            shift > two_hours - 60_000_000,
            "without X-Sent-At the delay reads as skew ({shift} µs)"
        );
    }
    for e in &old {
        let s = find(e);
        assert!(s.time_suspect, "forty days behind the server is flagged");
        assert_eq!(s.client_timestamp, e.client_timestamp);
    }
    assert_eq!(count(&h.deadletter_topic), 0, "no event is refused for its time");

    // A malformed header is not a reason to lose the batch (a 400 would
    // make the client delete it): the body's sent_at is used, as without one.
    let (_, body_bad) = session_at(804, 1, now);
    let (status, _, answer) = h.post(Some(&h.key), body_bad, &[("X-Sent-At", "yesterday")]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_kafka_refuses_for_good_is_answered_retry_much_later() {
    // A topic whose size limit no event fits: the broker refuses every
    // record with MESSAGE_TOO_LARGE, on every retry.
    let small = context_integration::unique("it_gw_small");
    context_integration::create_topic_with(&small, 1, &[("max.message.bytes", "200")])
        .await
        .unwrap();
    let topic = small.clone();
    let h = start(move |c| c.events_topic = topic).await;
    let (status, retry, answer) = h.post(Some(&h.key), body(&session(901, 3)), &[]).await;
    let wait = ingest_gateway::api_error::KAFKA_REFUSED_RETRY_AFTER.to_string();
    assert_eq!((status, retry.as_deref()), (500, Some(wait.as_str())), "{answer}");
    assert_eq!(answer["error"], "kafka_refused", "{answer}");
    assert!(answer["message"].as_str().unwrap().contains("keep it"), "{answer}");
    // A refusal for good says nothing about the broker: still ready, and a
    // batch for a healthy topic is still taken.
    assert_eq!(h.get("/readyz").await.0, 200);
    assert_eq!(count(&small), 0);
}

/// A body cut off on the way says nothing about the batch: the answer must
/// be one the phone retries (503 with `Retry-After`), never 400.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_cut_off_on_the_way_is_answered_retry() {
    use std::io::Read;
    let h = start(|_| {}).await;
    let json = body(&session(70, 3));
    let addr = h.gateway.addr;
    let key = h.key.clone();
    let text = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            json.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&json[..json.len() / 2]).unwrap();
        // Half-close: the rest of the body never comes.
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).to_ascii_lowercase()
    })
    .await
    .unwrap();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(text.contains("retry-after: 1"), "{text}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&h.events_topic), 0, "half a body produced events");
}
