//! `devicesim verify`: what the fleet was told against what ClickHouse holds.
//!
//! - every event acknowledged as accepted is in `context.events` exactly once
//!   after dedup (`FINAL`; two rows left means two partitions disagree);
//! - every event the gateway rejected is a dead letter;
//! - every accepted event with motion has an activity tag (of any model
//!   version, `unknown` included) or a dead letter;
//! - every device queue is empty;
//! - the share of tags equal to the recording's label, per model version
//!   (a smoke check: the recordings are the training data).
//!
//! The pipeline is asynchronous, so it polls until everything is there or
//! the wait is over.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::life::Install;
use super::queue::{Outcome, Queue};
use super::run::device_dirs;

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub state: PathBuf,
    pub clickhouse_url: String,
    pub database: String,
    pub wait: Duration,
}

/// What `verify` found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Verdict {
    pub devices: usize,
    pub acknowledged: usize,
    pub stored_once: usize,
    pub missing: Vec<String>,
    pub duplicated: Vec<String>,
    pub rejected: usize,
    pub rejected_without_dead_letter: Vec<String>,
    pub with_motion: usize,
    pub tagged: usize,
    pub tagged_unknown: usize,
    pub motion_dead_lettered: usize,
    pub motion_untagged: Vec<String>,
    pub queued_batches: usize,
    pub failed_batches: usize,
    /// Per model version: tags equal to the recording's label, and tags.
    pub agreement: BTreeMap<String, (usize, usize)>,
}

impl Verdict {
    /// Whether something was acknowledged, nothing is missing, doubled or
    /// untagged, and the queues are empty with no batch refused for good
    /// (whose events nobody checks).
    pub fn complete(&self) -> bool {
        self.acknowledged + self.rejected > 0
            && self.failed_batches == 0
            && self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.rejected_without_dead_letter.is_empty()
            && self.motion_untagged.is_empty()
            && self.queued_batches == 0
    }

    pub fn text(&self) -> String {
        let few = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        let mut out = format!(
            "verify: {} devices; {} events acknowledged as accepted: {} stored exactly once, {} missing{}, {} stored more than once after dedup{}\n",
            self.devices,
            self.acknowledged,
            self.stored_once,
            self.missing.len(),
            if self.missing.is_empty() { String::new() } else { format!(" (e.g. {})", few(&self.missing)) },
            self.duplicated.len(),
            if self.duplicated.is_empty() { String::new() } else { format!(" (e.g. {})", few(&self.duplicated)) },
        );
        out += &format!(
            "verify: {} events rejected by the gateway, {} of them without a dead letter\n",
            self.rejected,
            self.rejected_without_dead_letter.len()
        );
        out += &format!(
            "verify: {} accepted events with motion: {} tagged ({} unknown), {} dead-lettered, {} with neither{}\n",
            self.with_motion,
            self.tagged,
            self.tagged_unknown,
            self.motion_dead_lettered,
            self.motion_untagged.len(),
            if self.motion_untagged.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", few(&self.motion_untagged))
            },
        );
        for (model, (same, all)) in &self.agreement {
            out += &format!(
                "verify: model {model}: {same} of {all} tags equal the recording's label ({:.1} %; the recordings are its training data, so this is a smoke check, not accuracy)\n",
                100.0 * *same as f64 / (*all).max(1) as f64
            );
        }
        out += &format!(
            "verify: device queues: {} batches still queued, {} refused for good (in failed/)\n",
            self.queued_batches, self.failed_batches
        );
        out += if self.complete() {
            "verify: OK"
        } else {
            "verify: INCOMPLETE"
        };
        out
    }
}

struct ClickHouse {
    client: reqwest::Client,
    url: String,
    /// `CLICKHOUSE_USER` and `CLICKHOUSE_PASSWORD` (a secured stack's).
    user: String,
    password: String,
}

impl ClickHouse {
    async fn rows(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        let resp = self
            .client
            .post(&self.url)
            .basic_auth(&self.user, Some(&self.password))
            .body(format!("{sql} FORMAT TabSeparated"))
            .send()
            .await
            .with_context(|| format!("querying ClickHouse at {}", self.url))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("ClickHouse answered {status}: {}", text.trim());
        }
        Ok(text
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect())
    }
}

fn quoted<'a>(ids: impl Iterator<Item = &'a String>) -> String {
    ids.map(|id| format!("'{}'", id.replace(['\'', '\\'], "")))
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks the fleet in `state` against ClickHouse, polling up to `wait`.
pub async fn verify(opts: &VerifyOptions) -> Result<Verdict> {
    let dirs = device_dirs(&opts.state)?;
    if dirs.is_empty() {
        bail!(
            "no devices under {} (run `devicesim run --state {0}` first)",
            opts.state.display()
        );
    }
    let mut installs = Vec::new();
    let mut acked: HashMap<String, (Outcome, String)> = HashMap::new();
    let (mut queued, mut failed) = (0, 0);
    for dir in &dirs {
        let phone: Install = serde_json::from_slice(&std::fs::read(dir.join("device.json"))?)
            .with_context(|| format!("reading {}", dir.join("device.json").display()))?;
        installs.push(phone.install_id.to_string());
        let q = Queue::open(dir)?;
        queued += q.pending()?.len();
        failed += q.failed()?;
        for (id, outcome, label) in q.acknowledged()? {
            acked.insert(id, (outcome, label));
        }
    }
    let auth = crate::clickhouse_settings();
    let ch = ClickHouse {
        client: crate::clickhouse_http_client(Duration::from_secs(120))?,
        url: opts.clickhouse_url.clone(),
        user: auth.clickhouse_user,
        password: auth.clickhouse_password.expose().to_owned(),
    };
    let db = &opts.database;
    let installs = quoted(installs.iter());
    let deadline = Instant::now() + opts.wait;
    loop {
        let stored: HashMap<String, u64> = ch
            .rows(&format!(
                "SELECT toString(event_id), count() FROM `{db}`.events FINAL WHERE toString(install_id) IN ({installs}) GROUP BY event_id"
            ))
            .await?
            .into_iter()
            .filter_map(|r| Some((r.first()?.clone(), r.get(1)?.parse().ok()?)))
            .collect();
        let mut tags: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for r in ch
            .rows(&format!(
                "SELECT toString(event_id), model_version, activity FROM `{db}`.activity_latest WHERE toString(install_id) IN ({installs})"
            ))
            .await?
        {
            if let [id, model, activity] = &r[..] {
                tags.entry(id.clone()).or_default().push((model.clone(), activity.clone()));
            }
        }
        let mut v = Verdict {
            devices: dirs.len(),
            queued_batches: queued,
            failed_batches: failed,
            ..Verdict::default()
        };
        let mut need_letter = Vec::new();
        for (id, (outcome, label)) in &acked {
            match outcome {
                Outcome::Rejected => {
                    v.rejected += 1;
                    need_letter.push(id.clone());
                }
                Outcome::Ok => {
                    v.acknowledged += 1;
                    match stored.get(id) {
                        None => v.missing.push(id.clone()),
                        Some(1) => v.stored_once += 1,
                        Some(_) => v.duplicated.push(id.clone()),
                    }
                    if label.is_empty() {
                        continue;
                    }
                    v.with_motion += 1;
                    match tags.get(id) {
                        Some(list) => {
                            v.tagged += 1;
                            for (model, activity) in list {
                                let entry = v.agreement.entry(model.clone()).or_default();
                                entry.1 += 1;
                                if activity.eq_ignore_ascii_case(label) {
                                    entry.0 += 1;
                                }
                                if activity == "unknown" {
                                    v.tagged_unknown += 1;
                                }
                            }
                        }
                        None => need_letter.push(id.clone()),
                    }
                }
            }
        }
        let mut lettered = HashSet::new();
        for chunk in need_letter.chunks(2000) {
            for r in ch
                .rows(&format!(
                    "SELECT DISTINCT assumeNotNull(event_id) FROM `{db}`.dead_letters WHERE event_id IN ({})",
                    quoted(chunk.iter())
                ))
                .await?
            {
                if let Some(id) = r.into_iter().next() {
                    lettered.insert(id);
                }
            }
        }
        for id in need_letter {
            let is_rejected = matches!(acked.get(&id), Some((Outcome::Rejected, _)));
            match (lettered.contains(&id), is_rejected) {
                (true, true) => {}
                (false, true) => v.rejected_without_dead_letter.push(id),
                (true, false) => v.motion_dead_lettered += 1,
                (false, false) => v.motion_untagged.push(id),
            }
        }
        v.missing.sort();
        v.duplicated.sort();
        v.motion_untagged.sort();
        if v.complete() || Instant::now() >= deadline || v.queued_batches > 0 {
            return Ok(v);
        }
        eprintln!(
            "[verify] waiting: {} of {} stored, {} of {} motion events tagged or dead-lettered",
            v.stored_once + v.duplicated.len(),
            v.acknowledged,
            v.tagged + v.motion_dead_lettered,
            v.with_motion
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
