//! `context-topics` against the stack's broker (KAFKA_* variables; plaintext
//! on 127.0.0.1:9092 by default), each test with a declaration of topics
//! of its own: created once, up to date the second time, a config changed
//! behind its back put back with the topic's other configs kept, fewer
//! partitions and a compacted topic without compaction refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use context_runtime::kafka::KafkaSettings;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;

fn settings() -> KafkaSettings {
    KafkaSettings::from_tool_env().unwrap_or_else(|e| panic!("the KAFKA_* variables: {e}"))
}

fn admin() -> AdminClient<DefaultClientContext> {
    settings().client().create().unwrap()
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)))
}

/// A name no other test (or run) uses.
fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "it_topics_{what}_{}_{nanos}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One topic of a test declaration: name, partitions, configs.
type DeclaredTopic<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// A declaration of `topics` (name, partitions, replication, configs) in a
/// file of its own. Replication 3 and min.insync.replicas 2, as the real
/// declaration: the tests pass --replication-factor 1, as scripts/stack does.
fn declaration(topics: &[DeclaredTopic]) -> PathBuf {
    let mut text = String::new();
    for (name, partitions, configs) in topics {
        text.push_str(&format!(
            "[[topic]]\nname = \"{name}\"\npartitions = {partitions}\nreplication_factor = 3\n[topic.config]\n"
        ));
        for (k, v) in *configs {
            text.push_str(&format!("\"{k}\" = \"{v}\"\n"));
        }
    }
    let path = std::env::temp_dir().join(format!("{}.toml", unique("declaration")));
    std::fs::write(&path, text).unwrap();
    path
}

const DELETE: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("min.insync.replicas", "2"),
    ("retention.ms", "3600000"),
    ("max.message.bytes", "2000000"),
];

const COMPACT: &[(&str, &str)] = &[("cleanup.policy", "compact"), ("min.insync.replicas", "2")];

/// Runs `context-topics <args> --file <file> --replication-factor 1`: its
/// exit code and output.
fn run(args: &[&str], file: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_context-topics"))
        .args(args)
        .arg("--file")
        .arg(file)
        .args(["--replication-factor", "1"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The line of `topic` in `output`.
fn line<'a>(output: &'a str, topic: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with(&format!("{topic}: ")))
        .unwrap_or_else(|| panic!("no line for {topic} in:\n{output}"))
}

/// The topic's partition count (0: unknown) and its configs, with whether
/// each is set on the topic itself.
async fn describe(topic: &str) -> (usize, BTreeMap<String, (Option<String>, bool)>) {
    let a = admin();
    let partitions = a
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap()
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        return (0, BTreeMap::new());
    }
    let described = a
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options())
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    let configs = resource
        .entries
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                (e.value.clone(), e.source == rdkafka::admin::ConfigSource::DynamicTopic),
            )
        })
        .collect();
    (partitions, configs)
}

fn value(configs: &BTreeMap<String, (Option<String>, bool)>, key: &str) -> Option<String> {
    configs.get(key).and_then(|(v, _)| v.clone())
}

async fn create(topic: &str, partitions: i32, configs: &[(&str, &str)]) {
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        new = new.set(k, v);
    }
    for r in admin().create_topics([&new], &options()).await.unwrap() {
        r.unwrap();
    }
    for _ in 0..100 {
        if describe(topic).await.0 == usize::try_from(partitions).unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{topic} did not appear");
}

async fn delete(topics: &[&str]) {
    let _ = admin().delete_topics(topics, &options()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_creates_the_declared_topics_once_and_then_reports_them_up_to_date() {
    let (plain, compacted) = (unique("plain"), unique("compacted"));
    let file = declaration(&[(plain.as_str(), 2, DELETE), (compacted.as_str(), 1, COMPACT)]);

    // A dry run creates nothing.
    let (code, out) = run(&["apply", "--dry-run"], &file);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, &plain).contains("would create"), "{out}");
    assert_eq!(describe(&plain).await.0, 0, "a dry run created {plain}");
    let (code, out) = run(&["check"], &file);
    assert_eq!(code, 1, "check passes with the topics missing:\n{out}");

    let (code, out) = run(&["apply"], &file);
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, &plain).contains("created (2 partitions, replication factor 1"),
        "{out}"
    );
    assert!(line(&out, &compacted).contains("created"), "{out}");
    let (partitions, configs) = describe(&plain).await;
    assert_eq!(partitions, 2);
    assert_eq!(value(&configs, "retention.ms").as_deref(), Some("3600000"));
    assert_eq!(value(&configs, "max.message.bytes").as_deref(), Some("2000000"));
    // min.insync.replicas 2 capped at max(1, 1 - 1) for one broker.
    assert_eq!(value(&configs, "min.insync.replicas").as_deref(), Some("1"));
    let (_, configs) = describe(&compacted).await;
    assert_eq!(value(&configs, "cleanup.policy").as_deref(), Some("compact"));

    // Idempotent: nothing to do the second time, and check agrees.
    let (code, out) = run(&["apply"], &file);
    assert_eq!(code, 0, "{out}");
    assert_eq!(line(&out, &plain), format!("{plain}: up to date"), "{out}");
    assert_eq!(line(&out, &compacted), format!("{compacted}: up to date"), "{out}");
    let (code, out) = run(&["check"], &file);
    assert_eq!(code, 0, "{out}");

    delete(&[plain.as_str(), compacted.as_str()]).await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_changed_behind_its_back_is_put_back_and_its_other_configs_kept() {
    let topic = unique("changed");
    let file = declaration(&[(topic.as_str(), 1, DELETE)]);
    let (code, out) = run(&["apply"], &file);
    assert_eq!(code, 0, "{out}");

    // Someone shortens the retention and adds a config of their own
    // (AlterConfigs replaces the topic's whole dynamic set: the rest is
    // sent as it was).
    let alter = AlterConfig::new(ResourceSpecifier::Topic(&topic))
        .set("cleanup.policy", "delete")
        .set("min.insync.replicas", "1")
        .set("max.message.bytes", "2000000")
        .set("retention.ms", "60000")
        .set("segment.ms", "7200000");
    for r in admin().alter_configs([&alter], &options()).await.unwrap() {
        r.unwrap();
    }
    let mut seen = false;
    for _ in 0..100 {
        if value(&describe(&topic).await.1, "retention.ms").as_deref() == Some("60000") {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the broker did not take the change made behind the tool's back");

    let (code, out) = run(&["check"], &file);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, &topic).contains("would change retention.ms 60000 -> 3600000"),
        "{out}"
    );

    let (code, out) = run(&["apply"], &file);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        line(&out, &topic),
        format!("{topic}: changed retention.ms 60000 -> 3600000"),
        "{out}"
    );
    let (_, configs) = describe(&topic).await;
    assert_eq!(value(&configs, "retention.ms").as_deref(), Some("3600000"));
    assert_eq!(
        configs.get("segment.ms"),
        Some(&(Some("7200000".to_owned()), true)),
        "the topic's other dynamic config was reset"
    );
    let (code, out) = run(&["apply"], &file);
    assert_eq!(
        (code, line(&out, &topic)),
        (0, format!("{topic}: up to date").as_str()),
        "{out}"
    );

    delete(&[topic.as_str()]).await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread")]
async fn fewer_partitions_than_declared_are_refused_unless_adding_is_asked_for() {
    let topic = unique("partitions");
    create(
        &topic,
        1,
        &[
            ("cleanup.policy", "delete"),
            ("min.insync.replicas", "1"),
            ("retention.ms", "3600000"),
            ("max.message.bytes", "2000000"),
        ],
    )
    .await;
    let file = declaration(&[(topic.as_str(), 3, DELETE)]);

    let (code, out) = run(&["apply"], &file);
    assert_eq!(code, 1, "{out}");
    let l = line(&out, &topic);
    assert!(
        l.contains("drift: 1 partitions, fewer than the 3 declared") && l.contains("--add-partitions"),
        "{out}"
    );
    assert_eq!(
        describe(&topic).await.0,
        1,
        "partitions were added without --add-partitions"
    );

    let (code, out) = run(&["apply", "--add-partitions"], &file);
    assert_eq!(code, 0, "{out}");
    assert!(line(&out, &topic).contains("added partitions 1 -> 3"), "{out}");
    assert_eq!(describe(&topic).await.0, 3);
    let (code, out) = run(&["apply"], &file);
    assert_eq!(code, 0, "{out}");

    delete(&[topic.as_str()]).await;
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_declared_compacted_but_created_without_compaction_is_refused() {
    let topic = unique("uncompacted");
    create(&topic, 1, &[("cleanup.policy", "delete"), ("min.insync.replicas", "1")]).await;
    let file = declaration(&[(topic.as_str(), 1, COMPACT)]);

    let (code, out) = run(&["apply"], &file);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, &topic).contains("drift: cleanup.policy is delete, not compact"),
        "{out}"
    );
    // Not fixed behind the operator's back.
    let (_, configs) = describe(&topic).await;
    assert_eq!(value(&configs, "cleanup.policy").as_deref(), Some("delete"));
    let (code, _) = run(&["apply"], &file);
    assert_eq!(code, 1, "refused again");

    delete(&[topic.as_str()]).await;
    let _ = std::fs::remove_file(file);
}
