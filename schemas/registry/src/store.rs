//! The registry's state, rebuilt by applying the records of `_schemas` in
//! log order. Applying is deterministic: every replica that reads the same log
//! reaches the same state, which is what makes id allocation safe across
//! replicas (see [`Store::apply`]).
//!
//! The topic is compacted, which keeps only the latest record of each key.
//! Two rules make that safe:
//! - every claim (`SCHEMA` record) has a key no other record has (the
//!   `claim` field) and is never rewritten, so compaction never drops a
//!   winning claim nor moves it behind a losing one: the first claim of an id,
//!   schema or version stays first, on every replay;
//! - deletes are records of their own (`DELETE_SUBJECT`, `DELETE_VERSION`),
//!   never tombstones of a claim. A permanent delete hides the version, but
//!   the id keeps its schema (records in topics still carry it) and neither
//!   the id nor the version number is ever given again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use context_schemas::apache_avro::Schema;
use context_schemas::compat::Compatibility;
use serde::{Deserialize, Serialize};

/// Key of a record in `_schemas`, in the layout Confluent's registry uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogKey {
    Schema {
        subject: String,
        version: u32,
        magic: u32,
        /// Unique per claim, so that compaction keeps every claim (see the
        /// module doc). Absent in records written by other registries.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        claim: Option<String>,
    },
    Config {
        subject: Option<String>,
        magic: u32,
    },
    DeleteSubject {
        subject: String,
        magic: u32,
    },
    DeleteVersion {
        subject: String,
        version: u32,
        magic: u32,
    },
    Noop {
        magic: u32,
    },
}

/// Value of a `SCHEMA` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    pub subject: String,
    pub version: u32,
    pub id: u32,
    pub schema: String,
    #[serde(default)]
    pub deleted: bool,
}

/// Value of a `CONFIG` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    pub compatibility_level: String,
}

/// Value of a `DELETE_SUBJECT` record: soft-deletes every version up to `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteSubjectValue {
    pub subject: String,
    pub version: u32,
}

/// Value of a `DELETE_VERSION` record: one version soft- or permanently deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteVersionValue {
    pub subject: String,
    pub version: u32,
    #[serde(default)]
    pub permanent: bool,
}

/// A registered schema.
#[derive(Debug)]
pub struct StoredSchema {
    pub id: u32,
    /// The text as first registered.
    pub text: String,
    /// Parsing Canonical Form, the identity of the schema.
    pub canonical: String,
    pub parsed: Arc<Schema>,
}

/// One version of a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    pub id: u32,
    pub deleted: bool,
}

/// What applying one record did; the writer uses it to know whether its own
/// claim won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Accepted,
    /// The record lost to an earlier one (an id or version claimed twice) and
    /// was ignored.
    Rejected(String),
}

#[derive(Debug, Default)]
pub struct Store {
    schemas: HashMap<u32, Arc<StoredSchema>>,
    id_by_canonical: HashMap<String, u32>,
    subjects: BTreeMap<String, BTreeMap<u32, Version>>,
    global: Option<Compatibility>,
    per_subject: HashMap<String, Compatibility>,
    max_id: u32,
    /// The highest version ever claimed per subject, permanently deleted ones
    /// included: a version number is never given twice.
    highest_version: HashMap<String, u32>,
}

/// Parses an Avro schema text and returns it with its canonical form.
pub fn parse_avro(text: &str) -> Result<(Schema, String), String> {
    let schema = Schema::parse_str(text).map_err(|e| format!("Invalid schema: {e}"))?;
    let canonical = schema.canonical_form();
    Ok((schema, canonical))
}

impl Store {
    /// Applies one record of `_schemas`. `value` is `None` for a tombstone.
    pub fn apply(&mut self, key: &LogKey, value: Option<&[u8]>) -> Applied {
        match key {
            LogKey::Schema { subject, version, .. } => match value {
                None => {
                    if let Some(versions) = self.subjects.get_mut(subject) {
                        versions.remove(version);
                        if versions.is_empty() {
                            self.subjects.remove(subject);
                        }
                    }
                    Applied::Accepted
                }
                Some(bytes) => match serde_json::from_slice::<SchemaValue>(bytes) {
                    Ok(v) => self.apply_schema(v),
                    Err(e) => Applied::Rejected(format!("unreadable SCHEMA value: {e}")),
                },
            },
            LogKey::Config { subject, .. } => {
                let level = value
                    .and_then(|b| serde_json::from_slice::<ConfigValue>(b).ok())
                    .and_then(|c| c.compatibility_level.parse::<Compatibility>().ok());
                match (subject, level) {
                    (None, level) => self.global = level,
                    (Some(s), Some(level)) => {
                        self.per_subject.insert(s.clone(), level);
                    }
                    (Some(s), None) => {
                        self.per_subject.remove(s);
                    }
                }
                Applied::Accepted
            }
            LogKey::DeleteSubject { subject, .. } => {
                let upto = value
                    .and_then(|b| serde_json::from_slice::<DeleteSubjectValue>(b).ok())
                    .map_or(u32::MAX, |d| d.version);
                if let Some(versions) = self.subjects.get_mut(subject) {
                    for (_, v) in versions.range_mut(..=upto) {
                        v.deleted = true;
                    }
                }
                Applied::Accepted
            }
            LogKey::DeleteVersion { subject, version, .. } => {
                let permanent = value
                    .and_then(|b| serde_json::from_slice::<DeleteVersionValue>(b).ok())
                    .is_some_and(|d| d.permanent);
                if let Some(versions) = self.subjects.get_mut(subject) {
                    if permanent {
                        versions.remove(version);
                        if versions.is_empty() {
                            self.subjects.remove(subject);
                        }
                    } else if let Some(v) = versions.get_mut(version) {
                        v.deleted = true;
                    }
                }
                Applied::Accepted
            }
            LogKey::Noop { .. } => Applied::Accepted,
        }
    }

    fn apply_schema(&mut self, v: SchemaValue) -> Applied {
        let Ok((parsed, canonical)) = parse_avro(&v.schema) else {
            return Applied::Rejected(format!("schema of {} v{} does not parse", v.subject, v.version));
        };
        if let Some(&existing) = self.id_by_canonical.get(&canonical) {
            if existing != v.id {
                return Applied::Rejected(format!("schema already has id {existing}"));
            }
        }
        if let Some(existing) = self.schemas.get(&v.id) {
            if existing.canonical != canonical {
                return Applied::Rejected(format!("id {} already names another schema", v.id));
            }
        }
        let highest = self.highest_version.get(&v.subject).copied().unwrap_or(0);
        match self.subjects.get(&v.subject).and_then(|vs| vs.get(&v.version)) {
            Some(existing) if existing.id != v.id => {
                return Applied::Rejected(format!(
                    "{} version {} already holds id {}",
                    v.subject, v.version, existing.id
                ));
            }
            // The same claim again (a retried write), or another registry's
            // soft delete rewriting its claim: the version stays as it is.
            Some(_) => {}
            None if v.version <= highest => {
                return Applied::Rejected(format!(
                    "{} version {} was given before and deleted",
                    v.subject, v.version
                ));
            }
            None => {}
        }
        self.highest_version.insert(v.subject.clone(), highest.max(v.version));
        let versions = self.subjects.entry(v.subject.clone()).or_default();
        versions.insert(
            v.version,
            Version {
                id: v.id,
                deleted: v.deleted,
            },
        );
        self.schemas.entry(v.id).or_insert_with(|| {
            Arc::new(StoredSchema {
                id: v.id,
                text: v.schema,
                canonical: canonical.clone(),
                parsed: Arc::new(parsed),
            })
        });
        self.id_by_canonical.insert(canonical, v.id);
        self.max_id = self.max_id.max(v.id);
        Applied::Accepted
    }

    pub fn schema(&self, id: u32) -> Option<&Arc<StoredSchema>> {
        self.schemas.get(&id)
    }

    pub fn id_of(&self, canonical: &str) -> Option<u32> {
        self.id_by_canonical.get(canonical).copied()
    }

    pub fn next_id(&self) -> u32 {
        self.max_id + 1
    }

    /// The version number the next schema of `subject` gets.
    pub fn next_version(&self, subject: &str) -> u32 {
        self.highest_version.get(subject).copied().unwrap_or(0) + 1
    }

    /// Subjects with at least one version (live ones only unless `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, vs)| deleted || vs.values().any(|v| !v.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// All versions of a subject, or `None` if the subject has none.
    pub fn versions(&self, subject: &str) -> Option<&BTreeMap<u32, Version>> {
        self.subjects.get(subject)
    }

    /// The live versions of a subject, oldest first.
    pub fn live_versions(&self, subject: &str) -> Vec<(u32, Version)> {
        self.subjects
            .get(subject)
            .map(|vs| vs.iter().filter(|(_, v)| !v.deleted).map(|(n, v)| (*n, *v)).collect())
            .unwrap_or_default()
    }

    /// The version of `subject` that holds `canonical`, if any.
    pub fn find(&self, subject: &str, canonical: &str, deleted: bool) -> Option<(u32, u32)> {
        let id = self.id_of(canonical)?;
        self.subjects
            .get(subject)?
            .iter()
            .filter(|(_, v)| v.id == id && (deleted || !v.deleted))
            .map(|(n, v)| (*n, v.id))
            .next_back()
    }

    /// Every (subject, version) that uses schema `id`.
    pub fn usages(&self, id: u32) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(s, vs)| {
                vs.iter()
                    .filter(move |(_, v)| v.id == id && !v.deleted)
                    .map(move |(n, _)| (s.clone(), *n))
            })
            .collect()
    }

    pub fn global_compatibility(&self, default: Compatibility) -> Compatibility {
        self.global.unwrap_or(default)
    }

    pub fn subject_compatibility(&self, subject: &str) -> Option<Compatibility> {
        self.per_subject.get(subject).copied()
    }

    /// The level that applies to `subject`.
    pub fn effective_compatibility(&self, subject: &str, default: Compatibility) -> Compatibility {
        self.subject_compatibility(subject)
            .unwrap_or_else(|| self.global_compatibility(default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_record(subject: &str, version: u32, id: u32, schema: &str) -> (LogKey, Vec<u8>) {
        let key = LogKey::Schema {
            subject: subject.into(),
            version,
            magic: 1,
            claim: Some(format!("{subject}-{version}-{id}-{schema}")),
        };
        let value = SchemaValue {
            subject: subject.into(),
            version,
            id,
            schema: schema.into(),
            deleted: false,
        };
        (key, serde_json::to_vec(&value).unwrap())
    }

    #[test]
    fn the_first_claim_of_an_id_wins() {
        let mut store = Store::default();
        let (k1, v1) = schema_record("a-value", 1, 1, r#""string""#);
        let (k2, v2) = schema_record("b-value", 1, 1, r#""long""#);
        assert_eq!(store.apply(&k1, Some(&v1)), Applied::Accepted);
        assert!(matches!(store.apply(&k2, Some(&v2)), Applied::Rejected(_)));
        assert_eq!(store.subjects(false), vec!["a-value".to_string()]);
        assert_eq!(store.next_id(), 2);
    }

    #[test]
    fn the_same_schema_keeps_its_id_across_subjects() {
        let mut store = Store::default();
        let (k1, v1) = schema_record("a-value", 1, 1, r#"{"type":"string"}"#);
        let (k2, v2) = schema_record("b-value", 1, 2, r#""string""#);
        let (k3, v3) = schema_record("b-value", 1, 1, r#""string""#);
        store.apply(&k1, Some(&v1));
        assert!(matches!(store.apply(&k2, Some(&v2)), Applied::Rejected(_)));
        assert_eq!(store.apply(&k3, Some(&v3)), Applied::Accepted);
        assert_eq!(store.usages(1).len(), 2);
    }

    /// What Kafka's cleaner leaves of a log: the latest record of each key,
    /// in the order of those latest records.
    fn compact(log: &[(LogKey, Option<Vec<u8>>)]) -> Vec<(LogKey, Option<Vec<u8>>)> {
        let last: HashMap<String, usize> = log
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (serde_json::to_string(k).unwrap(), i))
            .collect();
        log.iter()
            .enumerate()
            .filter(|(i, (k, _))| last[&serde_json::to_string(k).unwrap()] == *i)
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn replay(log: &[(LogKey, Option<Vec<u8>>)]) -> Store {
        let mut store = Store::default();
        for (k, v) in log {
            store.apply(k, v.as_deref());
        }
        store
    }

    fn delete_version(subject: &str, version: u32, permanent: bool) -> (LogKey, Option<Vec<u8>>) {
        let key = LogKey::DeleteVersion {
            subject: subject.into(),
            version,
            magic: 0,
        };
        let value = DeleteVersionValue {
            subject: subject.into(),
            version,
            permanent,
        };
        (key, Some(serde_json::to_vec(&value).unwrap()))
    }

    #[test]
    fn a_losing_claim_never_wins_after_compaction() {
        // Two replicas claim version 1 and id 1 of one subject for two schemas.
        let (k1, v1) = schema_record("s-value", 1, 1, r#""string""#);
        let (k2, v2) = schema_record("s-value", 1, 1, r#""long""#);
        // The loser retries with the next id and version.
        let (k3, v3) = schema_record("s-value", 2, 2, r#""long""#);
        let log = vec![(k1, Some(v1)), (k2, Some(v2)), (k3, Some(v3))];
        let (full, compacted) = (replay(&log), replay(&compact(&log)));
        for store in [&full, &compacted] {
            assert_eq!(store.schema(1).unwrap().canonical, r#""string""#);
            assert_eq!(store.schema(2).unwrap().canonical, r#""long""#);
            assert_eq!(store.live_versions("s-value").len(), 2);
        }
    }

    #[test]
    fn a_permanent_delete_keeps_the_id_and_retires_the_version() {
        let (k1, v1) = schema_record("s-value", 1, 1, r#""string""#);
        let (k2, v2) = schema_record("s-value", 2, 2, r#""long""#);
        let log = vec![
            (k1, Some(v1)),
            (k2, Some(v2)),
            delete_version("s-value", 2, false),
            delete_version("s-value", 2, true),
        ];
        for store in [replay(&log), replay(&compact(&log))] {
            assert_eq!(store.live_versions("s-value").len(), 1);
            assert!(store.versions("s-value").unwrap().get(&2).is_none());
            assert_eq!(
                store.schema(2).unwrap().canonical,
                r#""long""#,
                "the id keeps its schema"
            );
            assert_eq!(store.next_id(), 3, "the id is not given again");
            assert_eq!(store.next_version("s-value"), 3, "the version is not given again");
        }
        // A stale replica's claim of the retired version is refused.
        let mut store = replay(&log);
        let (k, v) = schema_record("s-value", 2, 3, r#""double""#);
        assert!(matches!(store.apply(&k, Some(&v)), Applied::Rejected(_)));
    }

    #[test]
    fn keys_use_confluents_layout() {
        let key = LogKey::Schema {
            subject: "s".into(),
            version: 2,
            magic: 1,
            claim: None,
        };
        assert_eq!(
            serde_json::to_string(&key).unwrap(),
            r#"{"keytype":"SCHEMA","subject":"s","version":2,"magic":1}"#
        );
        let key: LogKey = serde_json::from_str(r#"{"keytype":"CONFIG","subject":null,"magic":0}"#).unwrap();
        assert_eq!(
            key,
            LogKey::Config {
                subject: None,
                magic: 0
            }
        );
    }
}
