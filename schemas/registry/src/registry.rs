//! The registry's operations on top of the log: reads come from the store,
//! writes go through the log under one lock per process.
//!
//! Id allocation across replicas: a writer first catches up with the log,
//! proposes `(subject, version, id)` and appends it. Every replica applies
//! records in log order and ignores a claim whose id, schema or version was
//! already taken by an earlier record. The writer then waits until its own
//! record is applied and checks whether its claim stands; if another
//! replica's claim came first, it retries with fresh state. So ids never
//! collide, without a leader election: the log's order decides. Each claim
//! has a key of its own, so compaction of the topic keeps that order (see
//! [`crate::store`]).

use std::sync::Arc;

use context_schemas::compat::{self, Compatibility};

use crate::error::RegistryError;
use crate::log::SchemaLog;
use crate::store::{
    parse_avro, ConfigValue, DeleteSubjectValue, DeleteVersionValue, LogKey, SchemaValue, Store, StoredSchema, Version,
};

const CLAIM_ATTEMPTS: u32 = 32;

/// A version selector: a number or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSel {
    Latest,
    Number(u32),
}

impl VersionSel {
    pub fn parse(s: &str) -> Result<Self, RegistryError> {
        match s {
            "latest" | "-1" => Ok(VersionSel::Latest),
            n => match n.parse::<u32>() {
                Ok(v) if (1..=i32::MAX as u32).contains(&v) => Ok(VersionSel::Number(v)),
                _ => Err(RegistryError::InvalidVersion(s.to_owned())),
            },
        }
    }
}

/// A subject version with its schema.
#[derive(Debug, Clone)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: u32,
    pub schema: Arc<StoredSchema>,
}

pub struct Registry {
    log: SchemaLog,
    default_compatibility: Compatibility,
    write_lock: tokio::sync::Mutex<()>,
    conflicts: std::sync::atomic::AtomicU64,
    /// Makes this process's claim keys unique: start time and process id.
    claim_prefix: String,
    claims: std::sync::atomic::AtomicU64,
}

impl Registry {
    pub fn new(log: SchemaLog, default_compatibility: Compatibility) -> Self {
        Registry {
            log,
            default_compatibility,
            write_lock: tokio::sync::Mutex::new(()),
            conflicts: std::sync::atomic::AtomicU64::new(0),
            claim_prefix: {
                let started = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                format!("{started:x}-{:x}", std::process::id())
            },
            claims: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A claim key no other record of any replica has.
    fn next_claim(&self) -> String {
        let n = self.claims.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{n}", self.claim_prefix)
    }

    /// How many of this replica's claims lost to another replica's.
    pub fn claim_conflicts(&self) -> u64 {
        self.conflicts.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn ready(&self) -> bool {
        self.log.caught_up_at_start()
    }

    fn store(&self) -> Result<std::sync::RwLockReadGuard<'_, Store>, RegistryError> {
        if !self.ready() {
            return Err(RegistryError::NotReady);
        }
        Ok(self.log.store.read().expect("store lock"))
    }

    pub fn subjects(&self, deleted: bool) -> Result<Vec<String>, RegistryError> {
        Ok(self.store()?.subjects(deleted))
    }

    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, RegistryError> {
        let store = self.store()?;
        let versions = store
            .versions(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let list: Vec<u32> = versions
            .iter()
            .filter(|(_, v)| deleted || !v.deleted)
            .map(|(n, _)| *n)
            .collect();
        if list.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        Ok(list)
    }

    fn resolve(store: &Store, subject: &str, sel: VersionSel, deleted: bool) -> Result<(u32, Version), RegistryError> {
        let versions = store
            .versions(subject)
            .filter(|vs| deleted || vs.values().any(|v| !v.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let found = match sel {
            VersionSel::Latest => versions.iter().rev().find(|(_, v)| deleted || !v.deleted),
            VersionSel::Number(n) => versions.get_key_value(&n).filter(|(_, v)| deleted || !v.deleted),
        };
        found.map(|(n, v)| (*n, *v)).ok_or_else(|| match sel {
            VersionSel::Number(n) => RegistryError::VersionNotFound(subject.to_owned(), n),
            VersionSel::Latest => RegistryError::SubjectNotFound(subject.to_owned()),
        })
    }

    pub fn version(&self, subject: &str, sel: VersionSel, deleted: bool) -> Result<SubjectVersion, RegistryError> {
        let store = self.store()?;
        let (version, v) = Self::resolve(&store, subject, sel, deleted)?;
        let schema = store
            .schema(v.id)
            .cloned()
            .ok_or_else(|| RegistryError::SchemaNotFound(v.id.to_string()))?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version,
            schema,
        })
    }

    pub fn schema_by_id(&self, id: u32) -> Result<Arc<StoredSchema>, RegistryError> {
        self.store()?
            .schema(id)
            .cloned()
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
    }

    /// The schema of `id`; an id this replica does not know yet is looked
    /// up again once the reader has applied everything in the log now (an
    /// id registered through another replica a moment ago is found, never
    /// answered 404). A log that cannot be read answers 503, not 404.
    pub async fn schema_by_id_fresh(&self, id: u32) -> Result<Arc<StoredSchema>, RegistryError> {
        match self.schema_by_id(id) {
            Err(RegistryError::SchemaNotFound(_)) => {
                self.log.catch_up().await.map_err(|e| {
                    tracing::warn!(error = %e, id, "could not catch up with the schemas topic for an unknown id");
                    RegistryError::NotReady
                })?;
                self.schema_by_id(id)
            }
            other => other,
        }
    }

    /// How far the reader is behind the end of the schemas topic: `Ok(0)`
    /// when it applied everything there within `patience`, `Ok(n)` when `n`
    /// records are still unapplied after it, `Err` when the end could not be
    /// read (the broker is away: what was read is still served).
    pub async fn behind(&self, patience: std::time::Duration) -> Result<i64, RegistryError> {
        self.log.behind(patience).await
    }

    pub fn usages(&self, id: u32) -> Result<Vec<(String, u32)>, RegistryError> {
        let store = self.store()?;
        store
            .schema(id)
            .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))?;
        Ok(store.usages(id))
    }

    /// `POST /subjects/{s}`: the version of `subject` that holds this schema.
    pub fn lookup(&self, subject: &str, text: &str, deleted: bool) -> Result<SubjectVersion, RegistryError> {
        let (_, canonical) = parse_avro(text).map_err(RegistryError::InvalidSchema)?;
        let store = self.store()?;
        if store.versions(subject).is_none() {
            return Err(RegistryError::SubjectNotFound(subject.to_owned()));
        }
        let (version, id) = store
            .find(subject, &canonical, deleted)
            .ok_or_else(|| RegistryError::SchemaNotFound(format!("for subject '{subject}'")))?;
        Ok(SubjectVersion {
            subject: subject.to_owned(),
            version,
            schema: store.schema(id).cloned().expect("found schemas are stored"),
        })
    }

    pub fn compatibility(&self, subject: Option<&str>) -> Result<Compatibility, RegistryError> {
        let store = self.store()?;
        match subject {
            None => Ok(store.global_compatibility(self.default_compatibility)),
            Some(s) => store
                .subject_compatibility(s)
                .ok_or_else(|| RegistryError::SubjectConfigNotFound(s.to_owned())),
        }
    }

    pub fn effective_compatibility(&self, subject: &str) -> Result<Compatibility, RegistryError> {
        Ok(self
            .store()?
            .effective_compatibility(subject, self.default_compatibility))
    }

    /// Checks `text` against one version (or all under the subject's level
    /// when `sel` is `None`). Returns the problems; empty means compatible.
    pub fn test_compatibility(
        &self,
        subject: &str,
        sel: Option<VersionSel>,
        text: &str,
    ) -> Result<Vec<String>, RegistryError> {
        let (new, _) = parse_avro(text).map_err(RegistryError::InvalidSchema)?;
        let store = self.store()?;
        let level = store.effective_compatibility(subject, self.default_compatibility);
        let existing: Vec<Arc<StoredSchema>> = match sel {
            None => store
                .live_versions(subject)
                .iter()
                .filter_map(|(_, v)| store.schema(v.id).cloned())
                .collect(),
            Some(sel) => {
                let (_, v) = Self::resolve(&store, subject, sel, false)?;
                store.schema(v.id).cloned().into_iter().collect()
            }
        };
        let refs: Vec<&_> = existing.iter().map(|s| s.parsed.as_ref()).collect();
        let level = match (sel, level) {
            // Against one named version, the transitive variants mean the same.
            (Some(_), Compatibility::BackwardTransitive) => Compatibility::Backward,
            (Some(_), Compatibility::ForwardTransitive) => Compatibility::Forward,
            (Some(_), Compatibility::FullTransitive) => Compatibility::Full,
            (_, level) => level,
        };
        Ok(compat::check(level, &new, &refs))
    }

    /// `POST /subjects/{s}/versions`: registers `text` under `subject`, or
    /// returns the id it already has there.
    pub async fn register(&self, subject: &str, text: &str) -> Result<u32, RegistryError> {
        let (parsed, canonical) = parse_avro(text).map_err(RegistryError::InvalidSchema)?;
        if !self.ready() {
            return Err(RegistryError::NotReady);
        }
        let _guard = self.write_lock.lock().await;
        for attempt in 0..CLAIM_ATTEMPTS {
            if attempt > 0 {
                // Another replica claimed first: wait a random while so that two
                // busy replicas do not keep claiming the same next id in lockstep.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let ceiling_ms = 5 * u64::from(attempt.min(10));
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(nanos) % (ceiling_ms + 1))).await;
            }
            self.log.catch_up().await?;
            let claim = {
                let store = self.store()?;
                if let Some((_, id)) = store.find(subject, &canonical, false) {
                    return Ok(id);
                }
                let level = store.effective_compatibility(subject, self.default_compatibility);
                let existing: Vec<Arc<StoredSchema>> = store
                    .live_versions(subject)
                    .iter()
                    .filter_map(|(_, v)| store.schema(v.id).cloned())
                    .collect();
                let refs: Vec<&_> = existing.iter().map(|s| s.parsed.as_ref()).collect();
                let problems = compat::check(level, &parsed, &refs);
                if !problems.is_empty() {
                    return Err(RegistryError::Incompatible {
                        subject: subject.to_owned(),
                        problems,
                    });
                }
                SchemaValue {
                    subject: subject.to_owned(),
                    version: store.next_version(subject),
                    id: store.id_of(&canonical).unwrap_or_else(|| store.next_id()),
                    schema: text.to_owned(),
                    deleted: false,
                }
            };
            let key = LogKey::Schema {
                subject: subject.to_owned(),
                version: claim.version,
                magic: 1,
                claim: Some(self.next_claim()),
            };
            let value = serde_json::to_vec(&claim).map_err(|e| RegistryError::Store(e.to_string()))?;
            self.log.append_applied(&key, Some(value)).await?;
            let store = self.store()?;
            // Won only if the version holds our id *and* the id names our
            // schema: a rival claim of the same version and id for another
            // schema passes the first test alone.
            let won = store
                .versions(subject)
                .and_then(|vs| vs.get(&claim.version))
                .is_some_and(|v| v.id == claim.id)
                && store.schema(claim.id).is_some_and(|s| s.canonical == canonical);
            if won {
                tracing::info!(subject, version = claim.version, id = claim.id, "registered schema");
                return Ok(claim.id);
            }
            self.conflicts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("registry_claim_conflicts_total").increment(1);
            tracing::info!(subject, id = claim.id, "another replica claimed first; retrying");
        }
        Err(RegistryError::Store(format!(
            "could not claim an id for subject '{subject}' after {CLAIM_ATTEMPTS} attempts"
        )))
    }

    pub async fn set_compatibility(&self, subject: Option<&str>, level: Compatibility) -> Result<(), RegistryError> {
        let _guard = self.write_lock.lock().await;
        let key = LogKey::Config {
            subject: subject.map(str::to_owned),
            magic: 0,
        };
        let value = ConfigValue {
            compatibility_level: level.as_str().to_owned(),
        };
        let value = serde_json::to_vec(&value).map_err(|e| RegistryError::Store(e.to_string()))?;
        self.log.append_applied(&key, Some(value)).await?;
        Ok(())
    }

    /// Removes a subject's own level; returns the level it had.
    pub async fn delete_compatibility(&self, subject: &str) -> Result<Compatibility, RegistryError> {
        let previous = self.compatibility(Some(subject))?;
        let _guard = self.write_lock.lock().await;
        let key = LogKey::Config {
            subject: Some(subject.to_owned()),
            magic: 0,
        };
        self.log.append_applied(&key, None).await?;
        Ok(previous)
    }

    /// `DELETE /subjects/{s}`: soft delete (or permanent, after a soft one).
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<u32>, RegistryError> {
        let _guard = self.write_lock.lock().await;
        self.log.catch_up().await?;
        let versions: Vec<(u32, Version)> = {
            let store = self.store()?;
            let vs = store
                .versions(subject)
                .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
            vs.iter().map(|(n, v)| (*n, *v)).collect()
        };
        if permanent {
            if versions.iter().any(|(_, v)| !v.deleted) {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.to_owned()));
            }
            for (n, _) in &versions {
                self.append_delete_version(subject, *n, true).await?;
            }
            return Ok(versions.into_iter().map(|(n, _)| n).collect());
        }
        let live: Vec<u32> = versions.iter().filter(|(_, v)| !v.deleted).map(|(n, _)| *n).collect();
        let Some(&latest) = live.last() else {
            return Err(RegistryError::SubjectSoftDeleted(subject.to_owned()));
        };
        let key = LogKey::DeleteSubject {
            subject: subject.to_owned(),
            magic: 0,
        };
        let value = DeleteSubjectValue {
            subject: subject.to_owned(),
            version: latest,
        };
        let value = serde_json::to_vec(&value).map_err(|e| RegistryError::Store(e.to_string()))?;
        self.log.append_applied(&key, Some(value)).await?;
        Ok(live)
    }

    /// `DELETE /subjects/{s}/versions/{v}`.
    pub async fn delete_version(&self, subject: &str, sel: VersionSel, permanent: bool) -> Result<u32, RegistryError> {
        let _guard = self.write_lock.lock().await;
        self.log.catch_up().await?;
        let (version, v) = {
            let store = self.store()?;
            let include_deleted = permanent || matches!(sel, VersionSel::Number(_));
            Self::resolve(&store, subject, sel, include_deleted)?
        };
        match (permanent, v.deleted) {
            (true, false) => return Err(RegistryError::VersionNotSoftDeleted(subject.to_owned(), version)),
            (false, true) => return Err(RegistryError::VersionSoftDeleted(subject.to_owned(), version)),
            _ => self.append_delete_version(subject, version, permanent).await?,
        }
        Ok(version)
    }

    /// Deletes one version with a record of its own; the claim that gave the
    /// version stays in the log, so its id keeps its schema.
    async fn append_delete_version(&self, subject: &str, version: u32, permanent: bool) -> Result<(), RegistryError> {
        let key = LogKey::DeleteVersion {
            subject: subject.to_owned(),
            version,
            magic: 0,
        };
        let value = DeleteVersionValue {
            subject: subject.to_owned(),
            version,
            permanent,
        };
        let value = serde_json::to_vec(&value).map_err(|e| RegistryError::Store(e.to_string()))?;
        self.log.append_applied(&key, Some(value)).await?;
        Ok(())
    }
}
