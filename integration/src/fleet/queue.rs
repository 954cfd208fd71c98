//! A device's on-disk queue, as the SDK keeps one: a batch is written (and
//! synced) before it is first sent and deleted only after a 200, so a crash
//! of the app, of the simulator or of the server loses nothing.
//!
//! Layout of a device folder:
//!
//! - `device.json`: the install ([`super::life::Install`]);
//! - `queue/<seq>.body` and `queue/<seq>.json`: a batch's request body as
//!   sent (gzip or not) and what the simulator knows about it; the `.json`
//!   is written last, so a batch without it was never complete;
//! - `acked.tsv`: one line per acknowledged event, `event_id`, `ok` or
//!   `rejected`, the recording's label (empty without motion), appended and
//!   synced before the batch is deleted;
//! - `failed/`: batches the gateway refused for good (4xx other than 429),
//!   with its answer, kept for a human to look at.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What the simulator keeps beside a queued body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchMeta {
    pub gzip: bool,
    /// The events in body order: id and the recording's label ("" without motion).
    pub events: Vec<(String, String)>,
    /// When it was queued, µs since the epoch.
    pub queued_at_us: i64,
}

/// One device's queue folder.
#[derive(Debug, Clone)]
pub struct Queue {
    dir: PathBuf,
}

/// How an acknowledged event ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged by Kafka: it must reach ClickHouse.
    Ok,
    /// Rejected by validation: it must be a dead letter.
    Rejected,
}

impl Queue {
    /// Opens (creating) the queue of the device folder `dir`.
    pub fn open(dir: &Path) -> Result<Queue> {
        for sub in ["queue", "failed"] {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        // A line cut short by a crash while appending ends here, so that the
        // next acknowledgement starts on a line of its own.
        let log = dir.join("acked.tsv");
        if let Ok(text) = fs::read(&log) {
            if text.last().is_some_and(|b| *b != b'\n') {
                OpenOptions::new().append(true).open(&log)?.write_all(b"\n")?;
            }
        }
        Ok(Queue { dir: dir.to_owned() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, seq: u64, ext: &str) -> PathBuf {
        self.dir.join("queue").join(format!("{seq:012}.{ext}"))
    }

    /// Stores a batch durably; it is sent from now on until acknowledged.
    pub fn push(&self, seq: u64, body: &[u8], meta: &BatchMeta) -> Result<()> {
        write_synced(&self.path(seq, "body"), body)?;
        write_synced(&self.path(seq, "json"), &serde_json::to_vec(meta)?)?;
        sync_dir(&self.dir.join("queue"))
    }

    /// Sequence numbers of the complete batches, oldest first.
    pub fn pending(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.dir.join("queue"))? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".json").and_then(|s| s.parse().ok()) {
                out.push(seq);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    pub fn load(&self, seq: u64) -> Result<(Vec<u8>, BatchMeta)> {
        let meta = serde_json::from_slice(&fs::read(self.path(seq, "json"))?)
            .with_context(|| format!("reading {}", self.path(seq, "json").display()))?;
        Ok((fs::read(self.path(seq, "body"))?, meta))
    }

    /// Records the answer of a 200 (each event ok or rejected), then deletes
    /// the batch. A crash in between resends it: a duplicate, never a loss.
    pub fn acknowledge(&self, seq: u64, outcomes: &[(&str, Outcome, &str)]) -> Result<()> {
        let mut lines = String::new();
        for (id, outcome, label) in outcomes {
            let o = match outcome {
                Outcome::Ok => "ok",
                Outcome::Rejected => "rejected",
            };
            lines.push_str(&format!("{id}\t{o}\t{label}\n"));
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("acked.tsv"))?;
        log.write_all(lines.as_bytes())?;
        log.sync_data()?;
        self.remove(seq)
    }

    /// Moves a batch the gateway refused for good to `failed/` with the answer.
    pub fn fail(&self, seq: u64, answer: &str) -> Result<()> {
        let failed = self.dir.join("failed");
        // The answer, then the meta (the batch stops being queued), then the
        // body: a crash in between never leaves a queued meta without a body.
        write_synced(&failed.join(format!("{seq:012}.answer")), answer.as_bytes())?;
        fs::rename(self.path(seq, "json"), failed.join(format!("{seq:012}.json")))?;
        fs::rename(self.path(seq, "body"), failed.join(format!("{seq:012}.body")))?;
        Ok(())
    }

    fn remove(&self, seq: u64) -> Result<()> {
        // The meta first: without it the batch no longer counts as queued.
        fs::remove_file(self.path(seq, "json"))?;
        fs::remove_file(self.path(seq, "body"))?;
        Ok(())
    }

    /// Every acknowledged event of this device: (event_id, outcome, label).
    pub fn acknowledged(&self) -> Result<Vec<(String, Outcome, String)>> {
        let text = match fs::read_to_string(self.dir.join("acked.tsv")) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(text
            .lines()
            .filter_map(|line| {
                let mut f = line.split('\t');
                let (id, o, label) = (f.next()?, f.next()?, f.next().unwrap_or(""));
                let o = match o {
                    "ok" => Outcome::Ok,
                    "rejected" => Outcome::Rejected,
                    // A line cut short by a crash while appending: its batch was
                    // not deleted and is acknowledged again on its resend.
                    _ => return None,
                };
                Some((id.to_owned(), o, label.to_owned()))
            })
            .collect())
    }

    /// Batches in `failed/`.
    pub fn failed(&self) -> Result<usize> {
        Ok(fs::read_dir(self.dir.join("failed"))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".answer"))
            .count())
    }
}

/// Writes `bytes` to a temporary file, syncs it and renames it into place.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_data()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_stays_queued_until_acknowledged_and_its_events_are_logged() {
        let dir = std::env::temp_dir().join(format!("devicesim-queue-{}", uuid::Uuid::new_v4()));
        let q = Queue::open(&dir).unwrap();
        let meta = |n: usize| BatchMeta {
            gzip: false,
            events: (0..n).map(|i| (format!("id{i}"), String::new())).collect(),
            queued_at_us: 1,
        };
        q.push(2, b"second", &meta(1)).unwrap();
        q.push(1, b"first", &meta(2)).unwrap();
        // A body without its meta (a crash while queueing) is not a batch.
        fs::write(q.path(3, "body"), b"half").unwrap();
        assert_eq!(q.pending().unwrap(), vec![1, 2]);
        assert_eq!(q.load(1).unwrap(), (b"first".to_vec(), meta(2)));

        q.acknowledge(1, &[("id0", Outcome::Ok, "Walking"), ("id1", Outcome::Rejected, "")])
            .unwrap();
        assert_eq!(q.pending().unwrap(), vec![2]);
        q.fail(2, "{\"error\":\"bad_request\"}").unwrap();
        assert!(q.pending().unwrap().is_empty());
        assert_eq!(q.failed().unwrap(), 1);

        // A line cut short by a crash is skipped.
        let mut log = OpenOptions::new().append(true).open(dir.join("acked.tsv")).unwrap();
        log.write_all(b"id9\to").unwrap();
        let q = Queue::open(&dir).unwrap();
        q.push(4, b"fourth", &meta(1)).unwrap();
        q.acknowledge(4, &[("id4", Outcome::Ok, "")]).unwrap();
        assert_eq!(
            q.acknowledged().unwrap(),
            vec![
                ("id0".into(), Outcome::Ok, "Walking".into()),
                ("id1".into(), Outcome::Rejected, String::new()),
                ("id4".into(), Outcome::Ok, String::new())
            ]
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
