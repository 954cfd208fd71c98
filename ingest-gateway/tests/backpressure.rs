//! Lag-aware backpressure against the stack's broker: while a consumer group
//! that must keep up with the events topic is too far behind (an absolute
//! `max_lag`, or a share of the topic's `retention.ms`), batches are
//! answered 503 `backpressure` with `Retry-After` and nothing of them is
//! produced; once the group catches up they are taken again. A group that
//! does not exist is never a reason to refuse. Before, the gateway answered
//! 200 however far behind the consumers were, until retention deleted what
//! they had not read.

mod common;

use std::time::{Duration, Instant};

use common::{body, count, session, start, Harness};
use context_integration::{base_config, create_topic_with, unique};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// Commits `group`'s offsets on every partition of `topic`: at the end
/// (`None`) or at `offset`, as a consumer that read that far would.
fn commit(group: &str, topic: &str, offset: Option<i64>) {
    let c: BaseConsumer = base_config().set("group.id", group).create().unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(5)).unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        let at = match offset {
            Some(o) => o,
            None => c.fetch_watermarks(topic, p.id(), Duration::from_secs(5)).unwrap().1,
        };
        tpl.add_partition_offset(topic, p.id(), Offset::Offset(at)).unwrap();
    }
    c.commit(&tpl, CommitMode::Sync).unwrap();
}

/// Posts a new batch until it gets `want` (or `within` passes); the last answer.
async fn until_status(h: &Harness, seed: u64, want: u16, within: Duration) -> (u16, Option<String>, serde_json::Value) {
    let deadline = Instant::now() + within;
    loop {
        let answer = h.post(Some(&h.key), body(&session(seed, 2)), &[]).await;
        if answer.0 == want || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_behind_max_lag_turns_batches_to_503_until_it_catches_up() {
    let group = unique("it_bp_sink");
    let h = start(|c| {
        c.backpressure.groups = vec![group.clone(), unique("it_bp_never_created")];
        c.backpressure.max_lag = Duration::from_secs(2);
        c.backpressure.check_interval = Duration::from_millis(300);
        c.backpressure.retry_after = Duration::from_secs(7);
    })
    .await;
    commit(&group, &h.events_topic, Some(0));

    // Caught up (nothing to read), and a group that does not exist: taken.
    let (status, _, answer) = h.post(Some(&h.key), body(&session(1401, 2)), &[]).await;
    assert_eq!(status, 200, "{answer}");

    // The group reads nothing: its oldest unread record ages past 2 s.
    let (status, retry_after, answer) = until_status(&h, 1402, 503, Duration::from_secs(20)).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"], "backpressure", "{answer}");
    assert_eq!(retry_after.as_deref(), Some("7"));
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains(&group) && message.contains("backpressure.max_lag"),
        "{message}"
    );
    let (ready, text) = h.get("/readyz").await;
    assert_eq!(ready, 200, "still ready: the phones need the 503 with Retry-After");
    assert!(text.contains("backpressure on"), "{text}");
    assert!(h.gateway.gateway.backpressure().is_some());
    // Only the batches taken before were produced (2 events each).
    let produced = count(&h.events_topic);

    // Still refused while behind.
    let (status, _, _) = h.post(Some(&h.key), body(&session(1403, 2)), &[]).await;
    assert_eq!(status, 503);
    assert_eq!(count(&h.events_topic), produced, "a refused batch was produced");

    // The group catches up: batches are taken again.
    commit(&group, &h.events_topic, None);
    let (status, _, answer) = until_status(&h, 1404, 200, Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{answer}");
    let (_, text) = h.get("/readyz").await;
    assert_eq!(text, "ready");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bound_follows_the_topics_retention() {
    // retention.ms 20 s, refusal at half of it: before the oldest unread
    // record could expire.
    let topic = unique("it_bp_retention");
    create_topic_with(&topic, 1, &[("retention.ms", "20000")])
        .await
        .unwrap();
    let group = unique("it_bp_router");
    let h = start(|c| {
        c.events_topic = topic.clone();
        c.backpressure.groups = vec![group.clone()];
        c.backpressure.check_interval = Duration::from_millis(300);
    })
    .await;
    commit(&group, &topic, Some(0));
    let started = Instant::now();
    let (status, _, answer) = h.post(Some(&h.key), body(&session(1501, 2)), &[]).await;
    assert_eq!(status, 200, "{answer}");
    let (status, _, answer) = until_status(&h, 1502, 503, Duration::from_secs(30)).await;
    assert_eq!(status, 503, "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "refused only after the first record could have expired"
    );
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("retention.ms"), "{message}");
    commit(&group, &topic, None);
    let (status, _, answer) = until_status(&h, 1503, 200, Duration::from_secs(20)).await;
    assert_eq!(status, 200, "{answer}");
}
