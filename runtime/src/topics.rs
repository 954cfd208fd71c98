//! The platform's Kafka topics, declared once in
//! `helm/context-pipeline/topics.toml` ([`DECLARATION`], compiled in as the
//! default) and applied by `context-topics` (`src/bin/context-topics.rs`):
//! `scripts/stack` runs it against the local broker, the chart as a hook Job
//! before every install and upgrade, operators by hand (docs/kafka-topics.md).
//!
//! For each declared topic, what the broker describes is compared with the
//! declaration ([`plan`], pure, so the decisions are unit-tested):
//! - missing: it is created with its partitions, replication and configs;
//! - a declared config that differs is set, except a retention or record
//!   size limit raised above the declaration, which is kept (reported);
//!   Kafka's AlterConfigs (the one
//!   librdkafka offers here) replaces a topic's whole dynamic config, so the
//!   topic's other dynamic configs are sent along unchanged;
//! - fewer partitions than declared is refused: adding partitions moves keys
//!   to other partitions, and an install's records in flight lose their
//!   order. `--add-partitions` adds them when that is acceptable. More
//!   partitions than declared is fine (reported);
//! - a replication factor below the declared one is refused: the admin API
//!   cannot change it (`kafka-reassign-partitions` can), and the topic keeps
//!   fewer copies than `acks=all` promises. A higher one is fine (reported);
//! - a topic declared compacted whose `cleanup.policy` lacks `compact` is
//!   refused, not fixed: retention may already have deleted records that
//!   compaction would have kept (the registry's schemas in `_schemas`), and
//!   only an operator can check that.
//!
//! `--replication-factor N` ([`Overrides`]) replaces the declared factor
//! for a cluster of fewer brokers (the single-node stack: 1) and caps
//! `min.insync.replicas` at `max(1, N - 1)`, so that one broker may be down
//! without stopping `acks=all` writes where there are two or more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigEntry, ConfigSource, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::Deserialize;

use crate::kafka::{KafkaSettings, Property};

/// The repository's declaration (`helm/context-pipeline/topics.toml`), the
/// default of `context-topics --file`.
pub const DECLARATION: &str = include_str!("../../helm/context-pipeline/topics.toml");

/// Where [`DECLARATION`] comes from, for messages.
pub const DECLARATION_PATH: &str = "helm/context-pipeline/topics.toml";

const MIN_INSYNC: &str = "min.insync.replicas";
const CLEANUP: &str = "cleanup.policy";

/// Why `context-topics` could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum TopicsError {
    /// The declaration file cannot be read or is wrong.
    #[error("{origin}: {detail}")]
    Declaration { origin: String, detail: String },
    /// A command-line override is wrong.
    #[error("{0}")]
    Usage(String),
    /// The broker refused or did not answer.
    #[error("{topic}: {action}: {detail}")]
    Kafka {
        topic: String,
        action: &'static str,
        detail: String,
    },
}

impl TopicsError {
    /// Whether the fault is in what was given (exit 2), not in the cluster.
    pub fn is_usage(&self) -> bool {
        matches!(self, TopicsError::Declaration { .. } | TopicsError::Usage(_))
    }
}

/// The declaration file: `[[topic]]` tables.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    #[serde(rename = "topic", default)]
    pub topics: Vec<TopicSpec>,
}

/// One declared topic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic configs (`retention.ms`, `min.insync.replicas`, ...), as text.
    #[serde(default)]
    pub config: BTreeMap<String, Property>,
}

impl TopicSpec {
    fn config_value(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(|p| p.0.as_str())
    }

    fn compacted(&self) -> bool {
        self.config_value(CLEANUP).is_some_and(has_compact)
    }
}

fn has_compact(policy: &str) -> bool {
    policy.split(',').any(|p| p.trim() == "compact")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Declaration {
    /// Parses and checks a declaration; `origin` names it in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, TopicsError> {
        let d: Declaration = toml::from_str(text).map_err(|e| TopicsError::Declaration {
            origin: origin.to_owned(),
            detail: e.to_string(),
        })?;
        let problems = d.problems();
        if problems.is_empty() {
            Ok(d)
        } else {
            Err(TopicsError::Declaration {
                origin: origin.to_owned(),
                detail: problems.join("; "),
            })
        }
    }

    /// The file at `path`, or [`DECLARATION`] without one.
    pub fn load(path: Option<&Path>) -> Result<Self, TopicsError> {
        match path {
            None => Declaration::parse(DECLARATION, DECLARATION_PATH),
            Some(p) => {
                let origin = p.display().to_string();
                let text = std::fs::read_to_string(p).map_err(|e| TopicsError::Declaration {
                    origin: origin.clone(),
                    detail: format!("cannot read it: {e}"),
                })?;
                Declaration::parse(&text, &origin)
            }
        }
    }

    /// Every problem of the declaration, each naming its topic.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.topics.is_empty() {
            problems.push("it declares no topic ([[topic]] tables)".to_owned());
        }
        let mut seen = BTreeSet::new();
        for t in &self.topics {
            let n = &t.name;
            if !valid_name(n) {
                problems.push(format!(
                    "`{n}` is not a Kafka topic name (letters, digits, . _ -, at most 249)"
                ));
            }
            if !seen.insert(n.as_str()) {
                problems.push(format!("{n} is declared twice"));
            }
            if t.partitions < 1 {
                problems.push(format!("{n}: partitions must be at least 1"));
            }
            if t.replication_factor < 1 {
                problems.push(format!("{n}: replication_factor must be at least 1"));
            }
            for (key, value) in &t.config {
                if value.0.trim().is_empty() {
                    problems.push(format!("{n}: config {key} is empty"));
                }
            }
            if let Some(v) = t.config_value(MIN_INSYNC) {
                match v.trim().parse::<i32>() {
                    Ok(m) if (1..=t.replication_factor).contains(&m) => {}
                    Ok(m) => problems.push(format!(
                        "{n}: {MIN_INSYNC} = {m} must be between 1 and the replication factor {}",
                        t.replication_factor
                    )),
                    Err(_) => problems.push(format!("{n}: {MIN_INSYNC} = `{v}` is not a number")),
                }
            }
            if let Some(p) = t.config_value(CLEANUP) {
                if !p.split(',').all(|x| matches!(x.trim(), "compact" | "delete")) {
                    problems.push(format!("{n}: {CLEANUP} = `{p}`: expected delete, compact or both"));
                }
            }
        }
        problems
    }

    /// The topics to apply: the declaration with `o` laid over it.
    pub fn resolve(&self, o: &Overrides) -> Result<Vec<TopicSpec>, TopicsError> {
        let declared: BTreeSet<&str> = self.topics.iter().map(|t| t.name.as_str()).collect();
        let unknown: Vec<&str> = o
            .partitions
            .keys()
            .chain(o.names.keys())
            .chain(o.skip.iter())
            .map(String::as_str)
            .filter(|n| !declared.contains(n))
            .collect();
        if !unknown.is_empty() {
            return Err(TopicsError::Usage(format!(
                "{} not declared (the declared topics: {})",
                unknown.join(", "),
                declared.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        if let Some(n) = o.replication_factor {
            if n < 1 {
                return Err(TopicsError::Usage(format!("--replication-factor {n}: at least 1")));
            }
        }
        let mut out = Vec::new();
        let mut names = BTreeSet::new();
        for t in &self.topics {
            if o.skip.contains(&t.name) {
                continue;
            }
            let mut r = t.clone();
            if let Some(name) = o.names.get(&t.name) {
                if !valid_name(name) {
                    return Err(TopicsError::Usage(format!(
                        "--name {}={name}: not a Kafka topic name",
                        t.name
                    )));
                }
                r.name = name.clone();
            }
            if let Some(&p) = o.partitions.get(&t.name) {
                if p < 1 {
                    return Err(TopicsError::Usage(format!("--partitions {}={p}: at least 1", t.name)));
                }
                r.partitions = p;
            }
            if let Some(n) = o.replication_factor {
                r.replication_factor = n;
                let cap = (n - 1).max(1);
                if let Some(m) = r.config_value(MIN_INSYNC).and_then(|v| v.trim().parse::<i32>().ok()) {
                    if m > cap {
                        r.config.insert(MIN_INSYNC.to_owned(), Property(cap.to_string()));
                    }
                }
            }
            if !names.insert(r.name.clone()) {
                return Err(TopicsError::Usage(format!(
                    "two declared topics would both be named {}",
                    r.name
                )));
            }
            out.push(r);
        }
        Ok(out)
    }
}

/// What the command line changes in a declaration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Every topic's replication factor (and `min.insync.replicas` capped at
    /// `max(1, N - 1)`).
    pub replication_factor: Option<i32>,
    /// Partitions by declared name.
    pub partitions: BTreeMap<String, i32>,
    /// The name to use, by declared name.
    pub names: BTreeMap<String, String>,
    /// Declared topics left alone (the schemas topic of an external registry).
    pub skip: BTreeSet<String>,
}

/// `NAME=VALUE`.
fn pair<'a>(flag: &str, s: &'a str) -> Result<(&'a str, &'a str), TopicsError> {
    s.split_once('=')
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .ok_or_else(|| TopicsError::Usage(format!("{flag} `{s}`: expected NAME=VALUE")))
}

impl Overrides {
    /// From the command line's `--partitions TOPIC=N`, `--name DECLARED=NAME`
    /// and `--skip TOPIC` (each repeatable) and `--replication-factor N`.
    pub fn from_args(
        replication_factor: Option<i32>,
        partitions: &[String],
        names: &[String],
        skip: &[String],
    ) -> Result<Self, TopicsError> {
        let mut o = Overrides {
            replication_factor,
            ..Overrides::default()
        };
        for p in partitions {
            let (topic, n) = pair("--partitions", p)?;
            let n: i32 = n
                .parse()
                .map_err(|_| TopicsError::Usage(format!("--partitions `{p}`: `{n}` is not a number")))?;
            o.partitions.insert(topic.to_owned(), n);
        }
        for p in names {
            let (declared, name) = pair("--name", p)?;
            o.names.insert(declared.to_owned(), name.to_owned());
        }
        o.skip.extend(skip.iter().map(|s| s.trim().to_owned()));
        Ok(o)
    }
}

/// One config of a topic as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// `None` for a sensitive value the broker does not show.
    pub value: Option<String>,
    /// Set on the topic itself (source `DYNAMIC_TOPIC_CONFIG`), not inherited.
    pub dynamic: bool,
}

/// A topic as the broker describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Described {
    pub partitions: usize,
    /// The smallest number of replicas of any partition.
    pub replication_factor: usize,
    pub configs: BTreeMap<String, Current>,
}

/// The configs of a DescribeConfigs answer.
pub fn current_configs(entries: &[ConfigEntry]) -> BTreeMap<String, Current> {
    entries
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                Current {
                    value: e.value.clone(),
                    dynamic: e.source == ConfigSource::DynamicTopic,
                },
            )
        })
        .collect()
}

/// What to do with one topic, and what cannot be done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub topic: String,
    pub create: bool,
    /// With `create`: what it is created with, for the line.
    pub summary: String,
    /// Declared configs whose value differs: name, current value, declared value.
    pub changes: Vec<(String, Option<String>, String)>,
    /// With `changes`: the topic's whole dynamic config to send (AlterConfigs
    /// replaces it), its other dynamic configs unchanged.
    pub alter: BTreeMap<String, String>,
    /// Partitions to add: from, to (only with `--add-partitions`).
    pub add_partitions: Option<(usize, usize)>,
    /// Differences that are fine.
    pub notes: Vec<String>,
    /// Differences refused: the command exits non-zero.
    pub drift: Vec<String>,
}

impl Plan {
    /// Nothing to do and nothing refused.
    pub fn up_to_date(&self) -> bool {
        !self.create && self.changes.is_empty() && self.add_partitions.is_none() && self.drift.is_empty()
    }

    /// Something to create, set or add.
    pub fn has_work(&self) -> bool {
        self.create || !self.changes.is_empty() || self.add_partitions.is_some()
    }

    /// The line of this plan: what `done` (or, not done, what would be done).
    pub fn line(&self, done: bool) -> String {
        let mut parts = Vec::new();
        let verb = |did: &str, would: &str| if done { did.to_owned() } else { format!("would {would}") };
        if self.create {
            parts.push(format!("{} ({})", verb("created", "create"), self.summary));
        }
        if !self.changes.is_empty() {
            let changes: Vec<String> = self
                .changes
                .iter()
                .map(|(k, from, to)| format!("{k} {} -> {to}", from.as_deref().unwrap_or("(unset)")))
                .collect();
            parts.push(format!("{} {}", verb("changed", "change"), changes.join(", ")));
        }
        if let Some((from, to)) = self.add_partitions {
            parts.push(format!("{} {from} -> {to}", verb("added partitions", "add partitions")));
        }
        for d in &self.drift {
            parts.push(format!("drift: {d}"));
        }
        for n in &self.notes {
            parts.push(format!("note: {n}"));
        }
        if self.up_to_date() {
            parts.insert(0, "up to date".to_owned());
        }
        format!("{}: {}", self.topic, parts.join("; "))
    }
}

/// Whether the broker's `current` value is the declared one.
fn same(key: &str, current: &str, declared: &str) -> bool {
    if key == CLEANUP {
        let set = |s: &str| -> BTreeSet<String> { s.split(',').map(|p| p.trim().to_owned()).collect() };
        set(current) == set(declared)
    } else {
        current.trim() == declared.trim()
    }
}

/// Configs whose higher value keeps more (retention) or refuses less (record
/// size): a current value above the declared one is an operator's choice,
/// and putting the declared one back could delete unread records or refuse
/// ones the producers were told fit. `-1` is "no limit", the highest.
const KEPT_WHEN_RAISED: [&str; 3] = ["retention.ms", "retention.bytes", "max.message.bytes"];

/// Whether `current` is a raise of `declared` that [`plan`] keeps.
fn raised(key: &str, current: &str, declared: &str) -> bool {
    if !KEPT_WHEN_RAISED.contains(&key) {
        return false;
    }
    let (Ok(c), Ok(d)) = (current.trim().parse::<i64>(), declared.trim().parse::<i64>()) else {
        return false;
    };
    let unlimited = |v: i64| v < 0 && key != "max.message.bytes";
    match (unlimited(c), unlimited(d)) {
        (true, false) => true,
        (_, true) => false,
        (false, false) => c > d,
    }
}

/// What to do so that the topic the broker `described` (`None`: it does not
/// exist) is `spec`; `add_partitions` allows adding partitions.
pub fn plan(spec: &TopicSpec, described: Option<&Described>, add_partitions: bool) -> Plan {
    let mut p = Plan {
        topic: spec.name.clone(),
        ..Plan::default()
    };
    let Some(d) = described else {
        p.create = true;
        let mut summary = vec![
            format!("{} partitions", spec.partitions),
            format!("replication factor {}", spec.replication_factor),
        ];
        summary.extend(spec.config.iter().map(|(k, v)| format!("{k}={}", v.0)));
        p.summary = summary.join(", ");
        return p;
    };
    let want = usize::try_from(spec.partitions).unwrap_or(1);
    if d.partitions < want {
        if add_partitions {
            p.add_partitions = Some((d.partitions, want));
        } else {
            p.drift.push(format!(
                "{} partitions, fewer than the {want} declared: adding partitions moves keys to other \
                 partitions (an install's records in flight lose their order); run with --add-partitions \
                 to add them, or declare {}",
                d.partitions, d.partitions
            ));
        }
    } else if d.partitions > want {
        p.notes
            .push(format!("{} partitions, more than the {want} declared", d.partitions));
    }
    let rf = usize::try_from(spec.replication_factor).unwrap_or(1);
    if d.replication_factor < rf {
        p.drift.push(format!(
            "replication factor {}, below the {rf} declared: it cannot be raised here (kafka-reassign-partitions \
             can), and acks=all keeps fewer copies than declared; or, on a cluster of fewer brokers, \
             --replication-factor {}",
            d.replication_factor, d.replication_factor
        ));
    } else if d.replication_factor > rf {
        p.notes.push(format!(
            "replication factor {}, more than the {rf} declared",
            d.replication_factor
        ));
    }
    let mut keep_current = BTreeSet::new();
    if spec.compacted() {
        let policy = d.configs.get(CLEANUP).and_then(|c| c.value.clone());
        if !policy.as_deref().is_some_and(has_compact) {
            p.drift.push(format!(
                "{CLEANUP} is {}, not compact: retention may already have deleted records compaction would \
                 keep (for _schemas: registered schemas); check that, then set it with kafka-configs --alter \
                 --entity-type topics --entity-name {} --add-config {CLEANUP}=compact",
                policy.as_deref().unwrap_or("(unset)"),
                spec.name
            ));
            keep_current.insert(CLEANUP);
        }
    }
    for (key, declared) in &spec.config {
        if keep_current.contains(key.as_str()) {
            continue;
        }
        let current = d.configs.get(key).and_then(|c| c.value.clone());
        if let Some(c) = current.as_deref().filter(|c| raised(key, c, &declared.0)) {
            // An operator's raise (a longer retention through an outage, a
            // larger record limit) is kept: lowering it deletes records or
            // refuses them.
            p.notes
                .push(format!("{key} {c}, more than the {} declared: kept", declared.0));
            keep_current.insert(key.as_str());
            continue;
        }
        if !current.as_deref().is_some_and(|c| same(key, c, &declared.0)) {
            p.changes.push((key.clone(), current, declared.0.clone()));
        }
    }
    if p.changes.is_empty() {
        return p;
    }
    let hidden: Vec<&str> = d
        .configs
        .iter()
        .filter(|(k, c)| c.dynamic && c.value.is_none() && !spec.config.contains_key(*k))
        .map(|(k, _)| k.as_str())
        .collect();
    if !hidden.is_empty() {
        p.drift.push(format!(
            "its dynamic configs {} are not shown (sensitive), and setting the others would reset them: \
             set {} by hand",
            hidden.join(", "),
            p.changes.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(", ")
        ));
        p.changes.clear();
        return p;
    }
    p.alter = d
        .configs
        .iter()
        .filter(|(_, c)| c.dynamic)
        .filter_map(|(k, c)| Some((k.clone(), c.value.clone()?)))
        .collect();
    for (key, declared) in &spec.config {
        if !keep_current.contains(key.as_str()) {
            p.alter.insert(key.clone(), declared.0.clone());
        }
    }
    p
}

/// The broker side: describe, create, alter, add partitions.
pub struct Admin {
    admin: AdminClient<DefaultClientContext>,
    timeout: Duration,
}

impl Admin {
    pub fn connect(settings: &KafkaSettings, timeout: Duration) -> Result<Self, TopicsError> {
        // A metadata request must never create the topic it asks about (a
        // producer-type client's default, on a broker that allows it).
        let admin = settings
            .client()
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| TopicsError::Kafka {
                topic: "(all)".into(),
                action: "creating an admin client",
                detail: e.to_string(),
            })?;
        Ok(Admin { admin, timeout })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    fn error(topic: &str, action: &'static str, detail: impl ToString) -> TopicsError {
        TopicsError::Kafka {
            topic: topic.to_owned(),
            action,
            detail: detail.to_string(),
        }
    }

    /// Partitions and replicas from the metadata; `None` for a topic the
    /// broker does not know.
    fn layout(&self, topic: &str) -> Result<Option<(usize, usize)>, TopicsError> {
        let metadata = self
            .admin
            .inner()
            .fetch_metadata(Some(topic), self.timeout)
            .map_err(|e| Admin::error(topic, "reading metadata", e))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            Some(code) => return Err(Admin::error(topic, "reading metadata", code)),
        }
        if t.partitions().is_empty() {
            return Ok(None);
        }
        let replicas = t.partitions().iter().map(|p| p.replicas().len()).min().unwrap_or(0);
        Ok(Some((t.partitions().len(), replicas)))
    }

    /// The topic as the broker describes it; `None` when it does not exist.
    pub async fn describe(&self, topic: &str) -> Result<Option<Described>, TopicsError> {
        let Some((partitions, replication_factor)) = self.layout(topic)? else {
            return Ok(None);
        };
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &self.options())
            .await
            .map_err(|e| Admin::error(topic, "describing its configs", e))?;
        let resource = results
            .into_iter()
            .next()
            .ok_or_else(|| Admin::error(topic, "describing its configs", "the broker described nothing"))?
            .map_err(|code| Admin::error(topic, "describing its configs", code))?;
        Ok(Some(Described {
            partitions,
            replication_factor,
            configs: current_configs(&resource.entries),
        }))
    }

    /// Creates `spec`; `false` when it exists already (created meanwhile).
    pub async fn create(&self, spec: &TopicSpec) -> Result<bool, TopicsError> {
        let mut new = NewTopic::new(
            &spec.name,
            spec.partitions,
            TopicReplication::Fixed(spec.replication_factor),
        );
        for (key, value) in &spec.config {
            new = new.set(key, &value.0);
        }
        let results = self
            .admin
            .create_topics([&new], &self.options())
            .await
            .map_err(|e| Admin::error(&spec.name, "creating it", e))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => return Ok(false),
                Err((_, code)) => return Err(Admin::error(&spec.name, "creating it", code)),
            }
        }
        // A created topic takes a moment to show in the metadata.
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some((n, _)) = self.layout(&spec.name)? {
                if n >= usize::try_from(spec.partitions).unwrap_or(1) {
                    return Ok(true);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Admin::error(
                    &spec.name,
                    "creating it",
                    "created, but its partitions did not appear in the metadata",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets the topic's whole dynamic config to `configs`.
    pub async fn alter(&self, topic: &str, configs: &BTreeMap<String, String>) -> Result<(), TopicsError> {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (key, value) in configs {
            alter = alter.set(key, value);
        }
        let results = self
            .admin
            .alter_configs([&alter], &self.options())
            .await
            .map_err(|e| Admin::error(topic, "setting its configs", e))?;
        for r in results {
            if let Err((_, code)) = r {
                return Err(Admin::error(topic, "setting its configs", code));
            }
        }
        Ok(())
    }

    /// Grows the topic to `to` partitions.
    pub async fn add_partitions(&self, topic: &str, to: usize) -> Result<(), TopicsError> {
        let new = NewPartitions::new(topic, to);
        let results = self
            .admin
            .create_partitions([&new], &self.options())
            .await
            .map_err(|e| Admin::error(topic, "adding partitions", e))?;
        for r in results {
            if let Err((_, code)) = r {
                return Err(Admin::error(topic, "adding partitions", code));
            }
        }
        Ok(())
    }
}

/// What `context-topics` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create, set and (with `add_partitions`) add what differs; with
    /// `dry_run` only say so.
    Apply { dry_run: bool, add_partitions: bool },
    /// Only compare: succeeds when nothing differs.
    Check,
}

/// The lines printed, one per topic, and whether the command succeeds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub ok: bool,
}

/// Applies (or checks) `topics` one after the other. A topic the broker
/// refuses is reported on its line and the others are still done.
pub async fn run(admin: &Admin, topics: &[TopicSpec], mode: Mode) -> Outcome {
    let mut outcome = Outcome {
        lines: Vec::new(),
        ok: true,
    };
    for spec in topics {
        match one(admin, spec, mode).await {
            Ok((line, ok)) => {
                outcome.ok &= ok;
                outcome.lines.push(line);
            }
            Err(e) => {
                outcome.ok = false;
                outcome.lines.push(format!("{}: error: {e}", spec.name));
            }
        }
    }
    outcome
}

async fn one(admin: &Admin, spec: &TopicSpec, mode: Mode) -> Result<(String, bool), TopicsError> {
    let add = matches!(
        mode,
        Mode::Apply {
            add_partitions: true,
            ..
        }
    );
    let mut p = plan(spec, admin.describe(&spec.name).await?.as_ref(), add);
    let act = matches!(mode, Mode::Apply { dry_run: false, .. });
    if !act || !p.has_work() {
        let ok = match mode {
            Mode::Check => p.up_to_date(),
            Mode::Apply { .. } => p.drift.is_empty(),
        };
        return Ok((p.line(false), ok));
    }
    if p.create && !admin.create(spec).await? {
        // Someone created it meanwhile: compare with what is there.
        p = plan(spec, admin.describe(&spec.name).await?.as_ref(), add);
    }
    if !p.create {
        if !p.changes.is_empty() {
            admin.alter(&spec.name, &p.alter).await?;
        }
        if let Some((_, to)) = p.add_partitions {
            admin.add_partitions(&spec.name, to).await?;
        }
        // What the broker says now (it takes a moment to show a change): a
        // value it keeps in another spelling, or a change it did not take,
        // would otherwise be changed again on every run.
        let added = p.add_partitions.is_some();
        let mut after = Plan::default();
        let mut shown = false;
        for _ in 0..50 {
            after = plan(spec, admin.describe(&spec.name).await?.as_ref(), false);
            let partitions_shown = !added || !after.drift.iter().any(|d| d.contains("fewer than"));
            if after.changes.is_empty() && partitions_shown {
                shown = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if added && !shown && after.changes.is_empty() {
            p.drift
                .push("the added partitions do not show in the metadata yet; run again to check".into());
        }
        for (key, now, want) in &after.changes {
            p.drift.push(format!(
                "the broker reports {key} = {} after it was set to {want}",
                now.as_deref().unwrap_or("(unset)")
            ));
        }
    }
    let ok = p.drift.is_empty();
    Ok((p.line(true), ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, partitions: i32, rf: i32, config: &[(&str, &str)]) -> TopicSpec {
        TopicSpec {
            name: name.into(),
            partitions,
            replication_factor: rf,
            config: config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Property((*v).to_owned())))
                .collect(),
        }
    }

    fn described(partitions: usize, rf: usize, configs: &[(&str, &str, bool)]) -> Described {
        Described {
            partitions,
            replication_factor: rf,
            configs: configs
                .iter()
                .map(|(k, v, dynamic)| {
                    (
                        (*k).to_owned(),
                        Current {
                            value: Some((*v).to_owned()),
                            dynamic: *dynamic,
                        },
                    )
                })
                .collect(),
        }
    }

    const EVENTS: &[(&str, &str)] = &[
        ("cleanup.policy", "delete"),
        ("min.insync.replicas", "2"),
        ("retention.ms", "604800000"),
    ];

    #[test]
    fn the_shipped_declaration_is_durable() {
        let d = Declaration::parse(DECLARATION, DECLARATION_PATH).unwrap();
        let names: Vec<&str> = d.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "context.events.v1",
                "context.motion.v1",
                "context.activity.v1",
                "context.deadletter.v1",
                "context.forget.v1",
                "_schemas"
            ]
        );
        for t in &d.topics {
            assert_eq!(t.replication_factor, 3, "{}", t.name);
            assert_eq!(t.config_value(MIN_INSYNC), Some("2"), "{}", t.name);
            assert!(t.config_value("max.message.bytes").is_some(), "{}", t.name);
            assert!(t.config_value(CLEANUP).is_some(), "{}", t.name);
            if !t.compacted() {
                assert!(t.config_value("retention.ms").is_some(), "{}", t.name);
            }
        }
        let schemas = d.topics.iter().find(|t| t.name == "_schemas").unwrap();
        assert!(schemas.compacted() && schemas.partitions == 1);
        // A dead letter holds a gateway event's whole JSON (32 MiB) and headers.
        let dead = d.topics.iter().find(|t| t.name == "context.deadletter.v1").unwrap();
        let max: usize = dead.config_value("max.message.bytes").unwrap().parse().unwrap();
        assert!(max > 32 << 20, "{max}");
        // An event record of the gateway's default max_record_bytes fits.
        let events = d.topics.iter().find(|t| t.name == "context.events.v1").unwrap();
        let max: usize = events.config_value("max.message.bytes").unwrap().parse().unwrap();
        assert!(max >= 1_000_000 + 1024, "{max}");
    }

    #[test]
    fn declarations_are_checked_whole() {
        let text = "[[topic]]\nname = \"a b\"\npartitions = 0\nreplication_factor = 2\n\
                    [topic.config]\n\"min.insync.replicas\" = \"3\"\n\"cleanup.policy\" = \"forever\"\n\
                    [[topic]]\nname = \"x\"\npartitions = 1\nreplication_factor = 1\n\
                    [[topic]]\nname = \"x\"\npartitions = 1\nreplication_factor = 1\n";
        let e = Declaration::parse(text, "t.toml").unwrap_err().to_string();
        for want in [
            "`a b` is not a Kafka topic name",
            "partitions must be at least 1",
            "min.insync.replicas = 3 must be between 1 and the replication factor 2",
            "cleanup.policy = `forever`",
            "x is declared twice",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = Declaration::parse(
            "[[topic]]\nname = \"x\"\npartitions = 1\nreplication_factor = 1\nretention = 5\n",
            "t",
        )
        .unwrap_err();
        assert!(e.is_usage() && e.to_string().contains("retention"), "{e}");
        // Numbers may be written as numbers.
        let d = Declaration::parse(
            "[[topic]]\nname = \"x\"\npartitions = 1\nreplication_factor = 1\n[topic.config]\n\"retention.ms\" = 1000\n",
            "t",
        )
        .unwrap();
        assert_eq!(d.topics[0].config_value("retention.ms"), Some("1000"));
    }

    #[test]
    fn overrides_rename_resize_skip_and_cap_min_insync() {
        let d = Declaration {
            topics: vec![
                spec("context.events.v1", 12, 3, EVENTS),
                spec(
                    "_schemas",
                    1,
                    3,
                    &[("cleanup.policy", "compact"), ("min.insync.replicas", "2")],
                ),
            ],
        };
        let o = Overrides::from_args(
            Some(1),
            &["context.events.v1=4".into()],
            &["context.events.v1=prod.events".into()],
            &["_schemas".into()],
        )
        .unwrap();
        let r = d.resolve(&o).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "prod.events");
        assert_eq!((r[0].partitions, r[0].replication_factor), (4, 1));
        assert_eq!(r[0].config_value(MIN_INSYNC), Some("1"), "capped at max(1, 1 - 1)");
        // Two brokers: 1; four: the declared 2 stays.
        for (n, want) in [(2, "1"), (3, "2"), (4, "2")] {
            let o = Overrides {
                replication_factor: Some(n),
                ..Overrides::default()
            };
            assert_eq!(d.resolve(&o).unwrap()[0].config_value(MIN_INSYNC), Some(want), "{n}");
        }
        // Names the declaration does not have are refused.
        let o = Overrides::from_args(None, &["context.event.v1=4".into()], &[], &[]).unwrap();
        let e = d.resolve(&o).unwrap_err().to_string();
        assert!(
            e.contains("context.event.v1 not declared") && e.contains("_schemas"),
            "{e}"
        );
        for bad in ["4", "=4", "context.events.v1=", "context.events.v1=four"] {
            assert!(Overrides::from_args(None, &[bad.into()], &[], &[]).is_err(), "{bad}");
        }
        let o = Overrides::from_args(None, &[], &["_schemas=context.events.v1".into()], &[]).unwrap();
        assert!(d.resolve(&o).unwrap_err().to_string().contains("both be named"));
    }

    #[test]
    fn a_missing_topic_is_created_and_a_matching_one_is_up_to_date() {
        let s = spec("e", 12, 3, EVENTS);
        let p = plan(&s, None, false);
        assert!(p.create && p.drift.is_empty());
        assert!(p.line(true).starts_with("e: created ("), "{}", p.line(true));
        assert!(p.line(false).contains("would create"));
        // Values inherited from the broker's defaults match too.
        let d = described(
            12,
            3,
            &[
                ("cleanup.policy", "delete", false),
                ("min.insync.replicas", "2", true),
                ("retention.ms", "604800000", false),
                ("segment.ms", "3600000", true),
            ],
        );
        let p = plan(&s, Some(&d), false);
        assert!(p.up_to_date(), "{p:?}");
        assert_eq!(p.line(true), "e: up to date");
    }

    #[test]
    fn a_changed_config_is_put_back_with_the_other_dynamic_configs_kept() {
        let s = spec("e", 12, 3, EVENTS);
        let d = described(
            12,
            3,
            &[
                ("cleanup.policy", "delete", false),
                ("min.insync.replicas", "1", false),
                ("retention.ms", "3600000", true),
                ("segment.ms", "3600000", true),
                ("max.message.bytes", "1048588", false),
            ],
        );
        let p = plan(&s, Some(&d), false);
        assert!(p.drift.is_empty() && !p.create);
        assert_eq!(
            p.changes,
            vec![
                ("min.insync.replicas".into(), Some("1".into()), "2".into()),
                ("retention.ms".into(), Some("3600000".into()), "604800000".into())
            ]
        );
        // AlterConfigs replaces the whole dynamic set: segment.ms goes along;
        // inherited values (max.message.bytes) are not pinned.
        let alter: Vec<(&str, &str)> = p.alter.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            alter,
            [
                ("cleanup.policy", "delete"),
                ("min.insync.replicas", "2"),
                ("retention.ms", "604800000"),
                ("segment.ms", "3600000")
            ]
        );
        assert_eq!(
            p.line(true),
            "e: changed min.insync.replicas 1 -> 2, retention.ms 3600000 -> 604800000"
        );
    }

    #[test]
    fn a_raised_retention_or_record_limit_is_kept_and_a_lowered_one_put_back() {
        let mut limited = EVENTS.to_vec();
        limited.push(("max.message.bytes", "1048588"));
        let s = spec("e", 12, 3, &limited);
        let d = described(
            12,
            3,
            &[
                ("cleanup.policy", "delete", false),
                ("min.insync.replicas", "2", true),
                ("retention.ms", "-1", true),
                ("max.message.bytes", "8388608", true),
            ],
        );
        let p = plan(&s, Some(&d), false);
        assert!(p.changes.is_empty() && p.drift.is_empty(), "{p:?}");
        assert!(p.up_to_date(), "{}", p.line(true));
        assert!(p
            .line(true)
            .contains("retention.ms -1, more than the 604800000 declared: kept"));
        assert!(p.line(true).contains("max.message.bytes 8388608"));

        let d = described(
            12,
            3,
            &[
                ("cleanup.policy", "delete", false),
                ("min.insync.replicas", "2", true),
                ("retention.ms", "1209600000", true),
                ("max.message.bytes", "1000", true),
            ],
        );
        let p = plan(&s, Some(&d), false);
        assert_eq!(
            p.changes,
            vec![("max.message.bytes".into(), Some("1000".into()), "1048588".into())]
        );
        // The raise stays in what is sent.
        assert_eq!(p.alter.get("retention.ms").map(String::as_str), Some("1209600000"));
        assert!(!raised("min.insync.replicas", "3", "2"));
        assert!(!raised("retention.ms", "1000", "-1"));
    }

    #[test]
    fn fewer_partitions_are_refused_unless_adding_them_is_allowed() {
        let s = spec("e", 12, 3, EVENTS);
        let d = described(
            4,
            3,
            &[
                ("cleanup.policy", "delete", false),
                ("min.insync.replicas", "2", true),
                ("retention.ms", "604800000", true),
            ],
        );
        let p = plan(&s, Some(&d), false);
        assert_eq!(p.drift.len(), 1, "{p:?}");
        assert!(
            p.drift[0].contains("4 partitions, fewer than the 12 declared") && p.drift[0].contains("--add-partitions")
        );
        assert!(!p.has_work());
        let p = plan(&s, Some(&d), true);
        assert!(p.drift.is_empty());
        assert_eq!(p.add_partitions, Some((4, 12)));
        // More partitions, more replicas: fine, and said.
        let d = described(
            16,
            5,
            &[
                ("cleanup.policy", "delete", false),
                ("min.insync.replicas", "2", true),
                ("retention.ms", "604800000", true),
            ],
        );
        let p = plan(&s, Some(&d), false);
        assert!(
            p.drift.is_empty() && p.changes.is_empty() && p.notes.len() == 2,
            "{p:?}"
        );
        assert!(p.line(true).contains("more than the 12 declared"));
    }

    #[test]
    fn a_lower_replication_factor_is_refused() {
        let s = spec("e", 12, 3, EVENTS);
        let d = described(
            12,
            1,
            &[
                ("cleanup.policy", "delete", false),
                ("min.insync.replicas", "2", true),
                ("retention.ms", "604800000", true),
            ],
        );
        let p = plan(&s, Some(&d), false);
        assert_eq!(p.drift.len(), 1);
        assert!(
            p.drift[0].contains("replication factor 1, below the 3 declared"),
            "{}",
            p.drift[0]
        );
    }

    #[test]
    fn a_compacted_topic_without_compaction_is_refused_not_fixed() {
        let s = spec(
            "_schemas",
            1,
            3,
            &[("cleanup.policy", "compact"), ("min.insync.replicas", "2")],
        );
        let d = described(
            1,
            3,
            &[("cleanup.policy", "delete", true), ("min.insync.replicas", "1", false)],
        );
        let p = plan(&s, Some(&d), false);
        assert_eq!(p.drift.len(), 1);
        assert!(
            p.drift[0].contains("cleanup.policy is delete, not compact"),
            "{}",
            p.drift[0]
        );
        // What can be fixed is, but compaction stays as it is.
        assert_eq!(
            p.changes,
            vec![("min.insync.replicas".into(), Some("1".into()), "2".into())]
        );
        assert_eq!(p.alter.get("cleanup.policy").map(String::as_str), Some("delete"));
        // compact,delete is compacted; the order of a policy list does not count.
        let s = spec("c", 1, 1, &[("cleanup.policy", "delete,compact")]);
        let d = described(1, 1, &[("cleanup.policy", "compact, delete", true)]);
        assert!(plan(&s, Some(&d), false).up_to_date());
    }

    #[test]
    fn hidden_dynamic_configs_stop_a_change_that_would_reset_them() {
        let s = spec("e", 1, 1, &[("retention.ms", "2000")]);
        let mut d = described(1, 1, &[("retention.ms", "1000", true)]);
        d.configs.insert(
            "sasl.secret.thing".into(),
            Current {
                value: None,
                dynamic: true,
            },
        );
        let p = plan(&s, Some(&d), false);
        assert!(p.changes.is_empty() && p.drift.len() == 1, "{p:?}");
        assert!(p.drift[0].contains("sasl.secret.thing"));
    }

    #[test]
    fn described_configs_know_what_the_topic_sets_itself() {
        let entry = |name: &str, source: ConfigSource| ConfigEntry {
            name: name.into(),
            value: Some("1".into()),
            source,
            is_read_only: false,
            is_default: false,
            is_sensitive: false,
        };
        let c = current_configs(&[
            entry("retention.ms", ConfigSource::DynamicTopic),
            entry("min.insync.replicas", ConfigSource::StaticBroker),
        ]);
        assert!(c["retention.ms"].dynamic);
        assert!(!c["min.insync.replicas"].dynamic);
    }
}
