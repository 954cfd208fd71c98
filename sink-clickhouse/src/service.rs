//! The consumer loops: one consumer group per source topic, each batching
//! rows for its table and committing offsets only after ClickHouse confirmed.
//!
//! Per record: decode through the registry (older schema versions resolve
//! into the current types); a record that cannot be decoded becomes a row of
//! `dead_letters`; a registry outage waits and retries the same record. A batch
//! is inserted when it reaches `max_rows`, `max_bytes` or `max_age`. While
//! ClickHouse refuses with a transient error, or with a configuration fault
//! (a missing column, table or database, wrong credentials: see [`classify`]),
//! the partitions are paused, `/readyz` turns 503 and the insert is retried with
//! jittered backoff: lag grows, nothing is committed or dead-lettered. Only
//! rows ClickHouse refuses one by one are isolated by splitting the batch and
//! go to `dead_letters` with the record's bytes, topic, partition and offset;
//! a dead letter that cannot be stored blocks the commit too. Offsets are
//! committed after the insert. A rebalance drops the revoked partitions' rows
//! (their new owner reads them again) before any record received after it is
//! added.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clickhouse::{RowOwned, RowWrite};
use context_runtime::backoff::Backoff;
use context_runtime::kafka::Defaults;
use context_runtime::shutdown::Shutdown;
use context_schemas::{ActivityTag, ContextEvent, DeadLetter};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schema_registry::client::DecodeError;
use schema_registry::RegistryClient;

use crate::batch::{insert_or_isolate, partition_chunks, Batch, MAX_PARTITIONS_PER_INSERT};
use crate::cluster::{ShardKey, Writer};
use crate::config::Config;
use crate::rows::{ActivityRow, DeadLetterRow, EventRow, InMemory, LedgerRow, Partitioned, Subject};
use context_runtime::forget::Forgotten;

/// What the service reports on /readyz.
#[derive(Debug, Default)]
pub struct Health {
    pub clickhouse_ok: AtomicBool,
    /// The registry is away or refuses (credentials, a wrong URL): records
    /// wait, nothing is dead-lettered or committed.
    pub registry_failing: AtomicBool,
    pub inserted_rows: AtomicU64,
    /// One stall watch per source's group ([`context_runtime::stall`]).
    pub stalls: Mutex<Vec<Arc<context_runtime::stall::Watch>>>,
}

/// Remembers partitions revoked in a rebalance for the loop to drop, and
/// keeps every assigned partition in the state the loop wants.
#[derive(Default)]
struct RebalanceLog {
    revoked: Mutex<Vec<i32>>,
    /// Whether the loop wants its partitions paused (ClickHouse refusing).
    /// librdkafka keeps an application's pause on a partition object across
    /// rebalances (only `resume` clears it, and only for partitions assigned
    /// at the time): a partition that left while paused and came back later
    /// would never be fetched again. So every assignment gets this state.
    paused: AtomicBool,
}

impl ClientContext for RebalanceLog {
    /// librdkafka's statistics (every 2 s): the lag of each assigned partition.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!("sink_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for RebalanceLog {
    fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut revoked = self.revoked.lock().expect("rebalance lock");
            revoked.extend(tpl.elements().iter().map(|e| e.partition()));
        }
    }

    fn post_rebalance(&self, consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            if tpl.count() == 0 {
                return;
            }
            let paused = self.paused.load(Ordering::SeqCst);
            let result = if paused {
                consumer.pause(tpl)
            } else {
                // Clears a pause left from before the partition went away.
                consumer.resume(tpl)
            };
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            match result {
                Ok(()) => tracing::info!(?partitions, paused, "partitions assigned"),
                Err(e) => {
                    tracing::error!(error = %e, ?partitions, paused, "setting the pause state of assigned partitions")
                }
            }
        }
    }
}

type Sink = StreamConsumer<RebalanceLog>;

/// The three sources and their tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Events,
    Activity,
    DeadLetters,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Events => "events",
            Source::Activity => "activity",
            Source::DeadLetters => "deadletter",
        }
    }
}

use context_runtime::clock::now_micros;
use context_runtime::deadletter as dl;

fn header(msg: &OwnedMessage, key: &str) -> Option<String> {
    msg.headers().and_then(|h| {
        h.iter()
            .find(|x| x.key == key)
            .and_then(|x| x.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    })
}

/// A record that could not become a row of its table.
pub(crate) fn dead_row(msg: &OwnedMessage, reason: &str, detail: String) -> DeadLetterRow {
    DeadLetterRow::from_dead_letter(DeadLetter {
        source: "sink-clickhouse".into(),
        reason: reason.into(),
        detail,
        source_topic: Some(msg.topic().to_owned()),
        source_partition: Some(msg.partition()),
        source_offset: Some(msg.offset()),
        app_id: None,
        event_id: None,
        failed_at: now_micros(),
        payload: msg.payload().unwrap_or_default().to_vec(),
    })
    .with_install(msg.key())
}

/// A record of the dead-letter topic as a row: the headers say why.
fn dead_letter_topic_row(msg: &OwnedMessage) -> DeadLetterRow {
    let envelope = header(msg, dl::ENVELOPE).unwrap_or_default();
    let failed_at = header(msg, dl::TIME)
        .and_then(|t| time_micros(&t))
        .or_else(|| msg.timestamp().to_millis().map(|ms| ms * 1000))
        .unwrap_or_else(now_micros);
    DeadLetterRow::from_dead_letter(DeadLetter {
        source: header(msg, dl::SOURCE).unwrap_or_else(|| "unknown".into()),
        reason: header(msg, dl::REASON).unwrap_or_else(|| "unknown".into()),
        detail: header(msg, dl::DETAIL).unwrap_or_default(),
        source_topic: header(msg, dl::SOURCE_TOPIC).or_else(|| Some(msg.topic().to_owned())),
        source_partition: header(msg, dl::SOURCE_PARTITION).and_then(|p| p.parse().ok()),
        source_offset: header(msg, dl::SOURCE_OFFSET).and_then(|p| p.parse().ok()),
        app_id: header(msg, dl::APP_ID),
        event_id: header(msg, dl::EVENT_ID),
        failed_at,
        payload: msg.payload().unwrap_or_default().to_vec(),
    })
    .with_envelope(envelope)
    .with_stub_and_target(
        header(msg, dl::TRUNCATED).and_then(|n| n.parse().ok()).unwrap_or(0),
        header(msg, dl::TARGET_TOPIC).unwrap_or_default(),
    )
    .with_install(msg.key())
}

/// RFC 3339 (as the gateway writes `dl.time`) to µs since the epoch.
fn time_micros(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// A batch of at least this many rows, every one refused on its own, is a
/// configuration fault rather than that many bad rows.
const ALL_REFUSED_IS_A_FAULT: usize = 10;

/// What a refused insert says about the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// ClickHouse is down, busy or slow: the same insert may succeed later.
    Transient,
    /// The table, a column, the database or the credentials are wrong: no row
    /// is at fault, and none may be dead-lettered; an operator must act.
    Fault,
    /// Some row's values are refused (a parse error, a type mismatch): the
    /// batch is split to find them.
    Row,
}

/// Why the sink stopped (it never stops for ClickHouse or the registry
/// being away: those are waited out, batch kept, nothing committed).
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The Kafka consumer could not be created or subscribed: the
    /// configuration is wrong (bootstrap, group); restarting will not help.
    #[error("Kafka consumer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The registry client could not be built (a malformed `registry_url`).
    #[error("schema registry client: {0}")]
    Registry(#[from] schema_registry::RegistryError),
    /// A source's task ended abnormally (a panic); a restart resumes from
    /// the committed offsets, so retrying is safe.
    #[error("a source stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The brokers refused the credentials or the certificate.
    #[error(transparent)]
    Access(#[from] context_runtime::kafka::AccessError),
    /// The forget ledger could not be read at start: without it, rows of
    /// forgotten installs would be inserted again.
    #[error(transparent)]
    Forget(#[from] context_runtime::forget::LedgerError),
}

impl SinkError {
    /// Whether restarting the same configuration can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Task(_))
    }
}

/// Classifies an insert error by ClickHouse's error code.
pub fn classify(e: &clickhouse::error::Error) -> Failure {
    use clickhouse::error::Error;
    match e {
        Error::Network(_) | Error::TimedOut => Failure::Transient,
        Error::BadResponse(text) => {
            let code = text
                .split("Code: ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|c| c.parse::<u32>().ok());
            match code {
                // no such column (8, 10, 16, 47), unknown table (60), unknown
                // database (81), unknown user, wrong password, access denied,
                // authentication (192, 193, 497, 516).
                Some(8 | 10 | 16 | 47 | 60 | 81 | 192 | 193 | 497 | 516) => Failure::Fault,
                // A value of a row is refused: cannot parse text, date, date
                // and time or number (6, 38, 41, 72), parse assertion (27), type
                // mismatch (53), argument out of bound (69), cannot convert (70).
                Some(6 | 27 | 38 | 41 | 53 | 69 | 70 | 72) => Failure::Row,
                // Everything else (too many parts, memory, timeouts, network,
                // cancelled queries, quorum, keeper, read-only replica, codes
                // this list does not know): a retry may help, and retrying
                // never gives a good row up.
                _ => Failure::Transient,
            }
        }
        _ => Failure::Fault,
    }
}

/// Whether ClickHouse may accept the same insert later.
pub fn retryable(e: &clickhouse::error::Error) -> bool {
    classify(e) == Failure::Transient
}

/// One insert, given up after `timeout`: a ClickHouse that accepts the
/// connection and never answers is an outage like any other, not a hang.
/// On a cluster each row goes to its install's shard, one replica after
/// another ([`crate::cluster::insert_routed`]); the timeout is per attempt.
async fn insert_rows<R: RowOwned + RowWrite + ShardKey>(
    writer: &Writer,
    table: &str,
    rows: &[R],
    timeout: Duration,
) -> Result<(), clickhouse::error::Error> {
    crate::cluster::insert_routed(writer, table, rows, |client, target, indices| async move {
        let insert = async {
            let mut insert = client.insert::<R>(&target).await?;
            for i in indices {
                insert.write(&rows[i]).await?;
            }
            insert.end().await
        };
        match tokio::time::timeout(timeout, insert).await {
            Ok(result) => result,
            Err(_) => {
                metrics::counter!("sink_insert_timeouts_total", "table" => table.to_owned()).increment(1);
                Err(clickhouse::error::Error::TimedOut)
            }
        }
    })
    .await
}

struct Loop<'a> {
    source: Source,
    settings: &'a Config,
    consumer: Arc<Sink>,
    writer: Writer,
    health: Arc<Health>,
    /// What this source's stall watch reads.
    progress: Arc<context_runtime::stall::Progress>,
    /// Stops the waits of an outage (ClickHouse or the registry): the batch
    /// is dropped uncommitted, and the records are read again after a restart.
    shutdown: Shutdown,
    /// The forget ledger: rows of forgotten installs are dropped at flush.
    forgotten: Arc<Forgotten>,
    /// Held (shared) by every flush from its filter to its last insert; the
    /// erasure takes it alone once, so no row filtered before a request is
    /// inserted after the request's mutations began.
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl Loop<'_> {
    /// Inserts `rows` into `table`, retrying while ClickHouse is unavailable
    /// or misconfigured (partitions paused, `/readyz` 503), isolating rows it
    /// refuses for good; returns the refused rows' indices and errors. With
    /// `all_or_nothing` (dead letters) a refused row is a fault too: nothing
    /// may be given up. A batch whose every row is refused is a fault, not a
    /// batch of bad rows. `None`: shutdown was asked for while waiting;
    /// nothing may be committed.
    async fn insert_with_retry<R: RowOwned + RowWrite + ShardKey>(
        &self,
        table: &str,
        rows: &[R],
        all_or_nothing: bool,
    ) -> Option<Vec<(usize, String)>> {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.settings.max_backoff);
        let mut paused = false;
        let timeout = self.settings.insert_timeout;
        let refused = loop {
            let started = std::time::Instant::now();
            let insert = |part: std::ops::Range<usize>| insert_rows(&self.writer, table, &rows[part], timeout);
            let problem = match insert_or_isolate(rows.len(), &insert, |e| classify(e) != Failure::Row).await {
                // Every row of a large batch refused one by one is no
                // coincidence of bad rows: the table is wrong.
                Ok(refused)
                    if refused.is_empty()
                        || (!all_or_nothing && (refused.len() < rows.len() || rows.len() < ALL_REFUSED_IS_A_FAULT)) =>
                {
                    metrics::histogram!("sink_insert_seconds", "table" => table.to_owned())
                        .record(started.elapsed().as_secs_f64());
                    self.health.clickhouse_ok.store(true, Ordering::Relaxed);
                    break refused;
                }
                Ok(refused) => (
                    Failure::Fault,
                    format!("{} of {} rows refused: {}", refused.len(), rows.len(), refused[0].1),
                ),
                Err(e) => (classify(&e), e.to_string()),
            };
            self.health.clickhouse_ok.store(false, Ordering::Relaxed);
            self.progress.error(format!("inserting into {table}: {}", problem.1));
            metrics::counter!("sink_insert_retries_total", "table" => table.to_owned()).increment(1);
            match problem {
                (Failure::Transient, e) => {
                    tracing::warn!(error = %e, table, rows = rows.len(), retry_in = ?backoff.peek(), "ClickHouse insert failed; keeping the batch");
                }
                (_, e) => {
                    metrics::counter!("sink_clickhouse_faults_total", "table" => table.to_owned()).increment(1);
                    tracing::error!(
                        error = %e,
                        table,
                        rows = rows.len(),
                        retry_in = ?backoff.peek(),
                        "ClickHouse refuses every insert into this table: a missing column, table or database \
                         (run `sink-clickhouse migrate`), or wrong credentials (check `clickhouse_user` and \
                         `clickhouse_password`). Nothing is committed or dead-lettered until it is fixed"
                    );
                }
            }
            if !paused {
                self.set_paused(true);
                paused = true;
            }
            if !self.wait_paused(backoff.next_wait()).await {
                tracing::warn!(
                    table,
                    rows = rows.len(),
                    "shutdown during the outage: the batch is not committed and will be read again"
                );
                self.set_paused(false);
                return None;
            }
        };
        if paused {
            self.set_paused(false);
        }
        Some(refused)
    }

    /// Pauses or resumes every assigned partition, and makes later
    /// assignments follow (see [`RebalanceLog::paused`]).
    fn set_paused(&self, paused: bool) {
        self.consumer.context().paused.store(paused, Ordering::SeqCst);
        if let Ok(assignment) = self.consumer.assignment() {
            let result = if paused {
                self.consumer.pause(&assignment)
            } else {
                self.consumer.resume(&assignment)
            };
            if let Err(e) = result {
                tracing::error!(error = %e, paused, "pausing or resuming the assigned partitions");
            }
        }
    }

    /// Keeps polling (partitions paused) for `wait` so the group keeps this
    /// member. A record of a partition that is not paused after all is put
    /// back (seek) and the partition paused, never dropped. `false`:
    /// shutdown was asked for.
    async fn wait_paused(&self, wait: Duration) -> bool {
        let wait_until = tokio::time::Instant::now() + wait;
        let mut shutdown = self.shutdown.clone();
        loop {
            let received = tokio::select! {
                _ = shutdown.requested() => return false,
                r = tokio::time::timeout_at(wait_until, self.consumer.recv()) => r,
            };
            let Ok(received) = received else { return true };
            if let Ok(msg) = received {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(msg.topic(), msg.partition());
                let (topic, partition, offset) = (msg.topic().to_owned(), msg.partition(), msg.offset());
                drop(msg);
                let _ = self.consumer.pause(&tpl);
                if let Err(e) = self
                    .consumer
                    .seek(&topic, partition, Offset::Offset(offset), Duration::from_secs(5))
                {
                    tracing::error!(error = %e, partition, offset, "could not put a record back while waiting");
                }
            }
        }
    }

    /// Converts a record, waiting out a registry that is away or refuses
    /// (the record is kept; `/readyz` 503) and an unknown schema id for
    /// `registry_unknown_id_patience`. `None`: shutdown was asked for.
    async fn convert_patiently<R, F, Fut>(&self, convert: &F, msg: &Arc<OwnedMessage>) -> Option<Converted<R>>
    where
        F: Fn(Arc<OwnedMessage>) -> Fut,
        Fut: std::future::Future<Output = Result<Converted<R>, DecodeError>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.settings.max_backoff);
        let mut shutdown = self.shutdown.clone();
        loop {
            match convert(Arc::clone(msg)).await {
                Ok(c) => {
                    self.health.registry_failing.store(false, Ordering::Relaxed);
                    return Some(c);
                }
                Err(e) => {
                    match &e {
                        DecodeError::UnknownId { id, .. } => tracing::warn!(
                            error = %e,
                            id,
                            partition = msg.partition(),
                            offset = msg.offset(),
                            patience = ?self.settings.registry.registry_unknown_id_patience,
                            "schema id unknown to the registry; retrying the record until the patience runs out"
                        ),
                        _ => {
                            self.health.registry_failing.store(true, Ordering::Relaxed);
                            tracing::warn!(error = %e, "schema registry unavailable or refusing; retrying the record")
                        }
                    }
                    metrics::counter!("sink_decode_retries_total", "source" => self.source.name(), "reason" => e.reason()).increment(1);
                    tokio::select! {
                        _ = shutdown.requested() => return None,
                        _ = tokio::time::sleep(backoff.next_wait()) => {}
                    }
                }
            }
        }
    }

    /// Inserts the batch and its dead letters, then commits. Shutdown during
    /// an outage drops the batch uncommitted.
    async fn flush<R: RowOwned + RowWrite + Partitioned + Subject + ShardKey>(
        &self,
        table: &str,
        batch: &mut Batch<(R, Arc<OwnedMessage>)>,
        dead: &mut Vec<(i32, DeadLetterRow)>,
    ) {
        let _gate = self.gate.read().await;
        if !self.forgotten.is_empty() {
            let before = batch.rows.len() + dead.len();
            batch.rows.retain(|(_, (row, _))| !row.forgotten(&self.forgotten));
            dead.retain(|(_, row)| !row.forgotten(&self.forgotten));
            let dropped = before - batch.rows.len() - dead.len();
            if dropped > 0 {
                metrics::counter!("sink_forgotten_dropped_total", "table" => table.to_owned())
                    .increment(dropped as u64);
            }
        }
        // Rows of one partition together, and no insert across more
        // partitions than ClickHouse takes at once.
        let mut keyed: Vec<(u32, (R, Arc<OwnedMessage>))> = std::mem::take(&mut batch.rows)
            .into_iter()
            .map(|(_, pair)| (pair.0.partition_month(), pair))
            .collect();
        keyed.sort_by_key(|(month, _)| *month);
        let months: Vec<u32> = keyed.iter().map(|(month, _)| *month).collect();
        let (rows, origins): (Vec<R>, Vec<Arc<OwnedMessage>>) = keyed.into_iter().map(|(_, pair)| pair).unzip();
        let n = rows.len();
        // Per partition, for the ledger: rows stored and records dead-lettered.
        let mut stored: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
        for m in &origins {
            stored.entry(m.partition()).or_default().0 += 1;
        }
        for (p, _) in dead.iter() {
            stored.entry(*p).or_default().1 += 1;
        }
        let mut refused = Vec::new();
        for chunk in partition_chunks(&months, MAX_PARTITIONS_PER_INSERT) {
            let start = chunk.start;
            let Some(refused_here) = self.insert_with_retry(table, &rows[chunk], false).await else {
                *batch = Batch::default();
                dead.clear();
                return;
            };
            for (index, error) in refused_here {
                refused.push((start + index, error));
            }
        }
        let mut dead_rows: Vec<DeadLetterRow> = std::mem::take(dead).into_iter().map(|(_, r)| r).collect();
        for (index, error) in &refused {
            // The record as it came (its bytes carry the schema id), and where from.
            dead_rows.push(dead_row(&origins[*index], "refused_by_clickhouse", error.clone()));
            let e = stored.entry(origins[*index].partition()).or_default();
            e.0 -= 1;
            e.1 += 1;
        }
        if !dead_rows.is_empty() {
            // A dead letter that cannot be stored blocks the commit like any row.
            if self.insert_with_retry("dead_letters", &dead_rows, true).await.is_none() {
                *batch = Batch::default();
                return;
            }
        }
        // The ledger, after what it vouches for and before the commit: a
        // range in it is stored; one committed and not in it was lost.
        let now = now_micros();
        let ledger: Vec<LedgerRow> = batch
            .offsets
            .iter()
            .map(|(p, next)| {
                let (rows_inserted, rows_dead_lettered) = stored.get(p).copied().unwrap_or_default();
                LedgerRow {
                    group_id: self.group(),
                    topic: self.topic().to_owned(),
                    partition: *p,
                    first_offset: batch.first.get(p).copied().unwrap_or(next - 1),
                    next_offset: *next,
                    rows_inserted,
                    rows_dead_lettered,
                    inserted_at_us: now,
                    inserted_time: u32::try_from(now / 1_000_000).unwrap_or(0),
                }
            })
            .collect();
        if !ledger.is_empty() && self.insert_with_retry("sink_ledger", &ledger, true).await.is_none() {
            *batch = Batch::default();
            return;
        }
        let inserted = (n - refused.len()) as u64;
        self.health.inserted_rows.fetch_add(inserted, Ordering::Relaxed);
        metrics::counter!("sink_rows_inserted_total", "table" => table.to_owned()).increment(inserted);
        metrics::histogram!("sink_batch_rows", "table" => table.to_owned()).record(n as f64);

        let mut tpl = TopicPartitionList::new();
        let topic = self.topic();
        // Only partitions still ours: a rebalance while the insert waited gave
        // the others away (their new owner's commits must not be moved back).
        let assigned = self.consumer.assignment().ok();
        for (p, next) in &batch.offsets {
            if assigned.as_ref().is_some_and(|a| a.find_partition(topic, *p).is_some()) {
                let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(*next));
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Sync) {
                // The rows are in ClickHouse; the records come again and merge away.
                tracing::warn!(error = %e, "committing offsets failed; records will be read again");
            }
        }
        *batch = Batch::default();
    }

    /// Forgets the rows of partitions revoked since the last call (their new
    /// owner reads them again from the committed offsets).
    fn drop_revoked<R>(&self, batch: &mut Batch<R>, dead: &mut Vec<(i32, DeadLetterRow)>) {
        let revoked: Vec<i32> = std::mem::take(&mut *self.consumer.context().revoked.lock().expect("rebalance lock"));
        if !revoked.is_empty() {
            batch.drop_partitions(&revoked);
            dead.retain(|(p, _)| !revoked.contains(p));
        }
    }

    /// This source's consumer group.
    fn group(&self) -> String {
        format!("{}-{}", self.settings.group_prefix, self.source.name())
    }

    fn topic(&self) -> &str {
        match self.source {
            Source::Events => &self.settings.events_topic,
            Source::Activity => &self.settings.activity_topic,
            Source::DeadLetters => &self.settings.deadletter_topic,
        }
    }
}

/// Decodes a record into a row of `R`, a dead-letter row, or a retry.
enum Converted<R> {
    Row(R),
    Dead(Box<DeadLetterRow>),
}

async fn convert_event(registry: &RegistryClient, msg: &OwnedMessage) -> Result<Converted<EventRow>, DecodeError> {
    match registry.decode::<ContextEvent>(msg.payload().unwrap_or_default()).await {
        Ok((_, e)) => Ok(Converted::Row(EventRow::from_event(e))),
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => Ok(Converted::Dead(Box::new(dead_row(msg, e.reason(), e.to_string())))),
    }
}

async fn convert_tag(registry: &RegistryClient, msg: &OwnedMessage) -> Result<Converted<ActivityRow>, DecodeError> {
    match registry.decode::<ActivityTag>(msg.payload().unwrap_or_default()).await {
        Ok((_, t)) => Ok(Converted::Row(ActivityRow::from_tag(&t))),
        Err(e) if e.is_retryable() => Err(e),
        Err(e) => Ok(Converted::Dead(Box::new(dead_row(msg, e.reason(), e.to_string())))),
    }
}

/// Runs one source until `shutdown` turns true, then flushes and commits.
async fn run_loop<R, F, Fut>(l: Loop<'_>, table: &str, convert: F, mut shutdown: Shutdown) -> Result<(), SinkError>
where
    R: RowOwned + RowWrite + Partitioned + InMemory + Subject + ShardKey,
    F: Fn(Arc<OwnedMessage>) -> Fut,
    Fut: std::future::Future<Output = Result<Converted<R>, DecodeError>>,
{
    let s = l.settings;
    let mut batch: Batch<(R, Arc<OwnedMessage>)> = Batch::default();
    let mut dead: Vec<(i32, DeadLetterRow)> = Vec::new();
    loop {
        let wait = batch.time_left(s.batch.max_age).max(Duration::from_millis(10));
        tokio::select! {
            _ = shutdown.requested() => {
                if !batch.is_empty() {
                    l.flush(table, &mut batch, &mut dead).await;
                }
                return Ok(());
            }
            received = tokio::time::timeout(wait, l.consumer.recv()) => {
                match received {
                    Err(_) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, source = l.source.name(), "consumer error"),
                    Ok(Ok(msg)) => {
                        // A rebalance inside this recv() revoked partitions before
                        // the message came: forget their rows first, or a message of
                        // a partition revoked and assigned back would be dropped
                        // with them while the offsets after it are committed.
                        l.drop_revoked(&mut batch, &mut dead);
                        // Shared, so a retry after a registry outage does not copy the payload.
                        let msg = Arc::new(msg.detach());
                        metrics::counter!("sink_records_received_total", "source" => l.source.name()).increment(1);
                        let (p, o, len) = (msg.partition(), msg.offset(), msg.payload().map_or(0, <[u8]>::len));
                        l.progress.delivered(msg.topic(), p, o);
                        let Some(converted) = l.convert_patiently(&convert, &msg).await else {
                            // Shutdown while the registry was away: what is
                            // batched is still inserted and committed, up to
                            // (not past) this record.
                            if !batch.is_empty() {
                                l.flush(table, &mut batch, &mut dead).await;
                            }
                            return Ok(());
                        };
                        // The batch's bytes: the record (kept for a dead letter
                        // should ClickHouse refuse its row) and the row.
                        let held = match converted {
                            Converted::Row(r) => {
                                let held = len + r.batch_bytes();
                                batch.push(p, (r, Arc::clone(&msg)));
                                held
                            }
                            Converted::Dead(d) => {
                                metrics::counter!("sink_dead_lettered_total", "source" => l.source.name()).increment(1);
                                let held = d.memory_bytes();
                                dead.push((p, *d));
                                held
                            }
                        };
                        batch.covered(p, o, held);
                    }
                }
            }
        }
        l.drop_revoked(&mut batch, &mut dead);
        if !batch.is_empty() && batch.due(s.batch.max_rows, s.batch.max_bytes, s.batch.max_age) {
            l.flush(table, &mut batch, &mut dead).await;
        }
    }
}

/// Most records librdkafka fetches ahead per source, in KiB (its default
/// is 64 MiB): with `batch.max_bytes`, what bounds the sink's memory.
pub const PREFETCH_KBYTES: usize = 32 << 10;

fn consumer(s: &Config, source: Source, topic: &str) -> Result<Sink, SinkError> {
    let consumer: Sink = s
        .kafka
        .client()
        .set("group.id", format!("{}-{}", s.group_prefix, source.name()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Records of aborted (or still open) transactions of the router and
        // the tagger are never inserted.
        .set("isolation.level", "read_committed")
        .set("session.timeout.ms", s.session_timeout.as_millis().to_string())
        .set("max.poll.interval.ms", s.max_poll_interval.as_millis().to_string())
        .set_default("statistics.interval.ms", "2000")
        .set("queued.max.messages.kbytes", PREFETCH_KBYTES.to_string())
        .create_with_context(RebalanceLog::default())?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// Runs every configured source until `shutdown` turns true, or until one
/// of them fails (an error or a panic): then the others are stopped (their
/// batches flushed) and the failure is returned, so the process ends and is
/// restarted instead of running with a source gone.
pub async fn run_sources(s: Config, health: Arc<Health>, shutdown: Shutdown) -> Result<(), SinkError> {
    context_runtime::kafka::verify_at_start(&s.kafka, Duration::from_secs(10)).await?;
    let registry = RegistryClient::connect(&s.registry)?;
    let writer = Writer::from_config(&s);
    // The sources' own token: fired by `shutdown`, or when a source fails.
    let (stop, sources_shutdown) = Shutdown::new();
    let stop = Arc::new(stop);
    {
        let (stop, mut shutdown) = (stop.clone(), shutdown.clone());
        tokio::spawn(async move {
            shutdown.requested().await;
            stop.fire();
        });
    }
    // The forget ledger, read whole before the first record, and the
    // erasure of what it names.
    let forgotten = context_runtime::forget::follow_configured(&s.kafka, &s.forget_topic).await?;
    let gate = Arc::new(tokio::sync::RwLock::new(()));
    if !s.forget_topic.trim().is_empty() {
        tokio::spawn(crate::forget::run_erasure(
            s.clickhouse(false).with_database(&s.database),
            s.database.clone(),
            forgotten.clone(),
            gate.clone(),
            sources_shutdown.clone(),
        ));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (source, topic) in [
        (Source::Events, s.events_topic.clone()),
        (Source::Activity, s.activity_topic.clone()),
        (Source::DeadLetters, s.deadletter_topic.clone()),
    ] {
        if topic.is_empty() {
            continue;
        }
        let (s, registry, writer, health, shutdown) = (
            s.clone(),
            registry.clone(),
            writer.clone(),
            health.clone(),
            sources_shutdown.clone(),
        );
        let (forgotten, gate) = (forgotten.clone(), gate.clone());
        tasks.spawn(async move {
            let consumer = Arc::new(consumer(&s, source, &topic)?);
            let progress = Arc::new(context_runtime::stall::Progress::default());
            let watch = context_runtime::stall::Watch::new(&format!("{}-{}", s.group_prefix, source.name()), s.stall());
            health.stalls.lock().expect("stall list").push(watch.clone());
            let _stall_watch = context_runtime::stall::spawn(
                watch,
                &s.kafka,
                progress.clone(),
                context_runtime::stall::positions_of(consumer.clone()),
                shutdown.clone(),
            )?;
            let l = Loop {
                source,
                settings: &s,
                consumer,
                writer,
                health,
                progress,
                shutdown: shutdown.clone(),
                forgotten,
                gate,
            };
            match source {
                Source::Events => {
                    let r = &registry;
                    run_loop(
                        l,
                        "events",
                        move |m| async move { convert_event(r, &m).await },
                        shutdown,
                    )
                    .await
                }
                Source::Activity => {
                    let r = &registry;
                    run_loop(
                        l,
                        "activity_tags",
                        move |m| async move { convert_tag(r, &m).await },
                        shutdown,
                    )
                    .await
                }
                Source::DeadLetters => {
                    run_loop(
                        l,
                        "dead_letters",
                        |m| std::future::ready(Ok(Converted::Row(dead_letter_topic_row(&m)))),
                        shutdown,
                    )
                    .await
                }
            }
        });
    }
    let mut first_failure = None;
    while let Some(ended) = tasks.join_next().await {
        let failure = match ended {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(SinkError::Task(e)),
        };
        if let Some(e) = failure {
            tracing::error!(error = %e, "a source stopped; stopping the others");
            stop.fire();
            first_failure.get_or_insert(e);
        }
    }
    match first_failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Stores records read again from Kafka as the sink's loops would (the same
/// conversion, dead letters for what cannot be decoded), for
/// `reconcile --repair`. Rows merge by their key, so storing twice is safe.
pub struct Repairer {
    source: Source,
    registry: RegistryClient,
    writer: Writer,
    timeout: Duration,
    /// Rows of forgotten installs are not stored again.
    pub forgotten: Arc<Forgotten>,
}

impl Repairer {
    pub fn new(c: &Config, topic: &str) -> anyhow::Result<Repairer> {
        let source = if topic == c.events_topic {
            Source::Events
        } else if topic == c.activity_topic {
            Source::Activity
        } else if topic == c.deadletter_topic {
            Source::DeadLetters
        } else {
            anyhow::bail!("{topic} is none of the sink's topics (events_topic, activity_topic, deadletter_topic)");
        };
        Ok(Repairer {
            source,
            registry: RegistryClient::connect(&c.registry)?,
            writer: Writer::from_config(c),
            timeout: c.insert_timeout,
            forgotten: Forgotten::empty(),
        })
    }

    /// Inserts `records`: (rows stored, records dead-lettered).
    pub async fn store(&self, records: &[OwnedMessage]) -> anyhow::Result<(u64, u64)> {
        let mut dead = Vec::new();
        let rows = match self.source {
            Source::Events => {
                let mut rows = Vec::new();
                for m in records {
                    match convert_event(&self.registry, m).await? {
                        Converted::Row(r) => rows.push(r),
                        Converted::Dead(d) => dead.push(*d),
                    }
                }
                rows.retain(|r: &EventRow| !r.forgotten(&self.forgotten));
                insert_rows(&self.writer, "events", &rows, self.timeout).await?;
                rows.len()
            }
            Source::Activity => {
                let mut rows = Vec::new();
                for m in records {
                    match convert_tag(&self.registry, m).await? {
                        Converted::Row(r) => rows.push(r),
                        Converted::Dead(d) => dead.push(*d),
                    }
                }
                rows.retain(|r: &ActivityRow| !r.forgotten(&self.forgotten));
                insert_rows(&self.writer, "activity_tags", &rows, self.timeout).await?;
                rows.len()
            }
            Source::DeadLetters => {
                let rows: Vec<DeadLetterRow> = records
                    .iter()
                    .map(dead_letter_topic_row)
                    .filter(|r| !r.forgotten(&self.forgotten))
                    .collect();
                insert_rows(&self.writer, "dead_letters", &rows, self.timeout).await?;
                rows.len()
            }
        };
        dead.retain(|r| !r.forgotten(&self.forgotten));
        if !dead.is_empty() {
            insert_rows(&self.writer, "dead_letters", &dead, self.timeout).await?;
        }
        Ok((rows as u64, dead.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clickhouse_errors_are_classified() {
        use clickhouse::error::Error;
        assert!(retryable(&Error::TimedOut));
        assert!(retryable(&Error::BadResponse(
            "Code: 252, e.displayText() = DB::Exception: Too many parts".into()
        )));
        assert!(!retryable(&Error::BadResponse(
            "Code: 53, e.displayText() = DB::Exception: Type mismatch".into()
        )));
        let class = |text: &str| classify(&Error::BadResponse(text.into()));
        assert_eq!(class("Code: 53, DB::Exception: Type mismatch"), Failure::Row);
        assert_eq!(class("Code: 27, DB::Exception: Cannot parse input"), Failure::Row);
        assert_eq!(
            class("Code: 394, DB::Exception: Query was cancelled"),
            Failure::Transient
        );
        assert_eq!(class("Code: 9999, DB::Exception: something new"), Failure::Transient);
        for fault in [
            "Code: 16, e.displayText() = DB::Exception: No such column battery_level in table ctx.events",
            "Code: 60, DB::Exception: Table ctx.events doesn't exist.",
            "Code: 81, DB::Exception: Database ctx doesn't exist",
            "Code: 516, DB::Exception: default: Authentication failed",
        ] {
            assert_eq!(class(fault), Failure::Fault, "{fault}");
        }
    }

    #[test]
    fn dead_letter_times_parse() {
        assert_eq!(time_micros("1970-01-01T00:00:01Z"), Some(1_000_000));
        assert_eq!(time_micros("2025-10-09T08:55:00.5Z"), Some(1_760_000_100_500_000));
        assert_eq!(time_micros("yesterday"), None);
    }
}
