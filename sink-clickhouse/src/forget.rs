//! Forgetting an install: `sink-clickhouse forget` (the operator's request),
//! the erasure the running sink does for every request of the ledger
//! (`context.forget.v1`, [`context_runtime::forget`]), and `forget status`.
//!
//! Erasure of one request, in the sink that serves:
//! 1. the ledger already holds the request, so every flush from now on
//!    drops the install's rows; a flush that filtered before it is waited
//!    for (the flush gate), so no row of the install is inserted after
//!    step 2 began;
//! 2. per table (`events`, `activity_tags`, `dead_letters`): count the
//!    install's rows, delete them with a mutation (`ALTER TABLE … DELETE`,
//!    which ClickHouse 18.16 and current versions run), wait until
//!    `system.mutations` shows every mutation of the table done;
//! 3. record the outcome (rows per table, when) in `forget_log`.
//!
//! `events` and `activity_tags` lose the rows captured up to the request
//! (`timestamp_us`, the skew-corrected capture time), so what the install
//! sends after it stays. `dead_letters` loses every letter of the install
//! (a letter keeps no capture time): by its `install_id`, or by the install
//! id in its bytes or envelope (letters stored before the column was).
//! A request for an install with no rows is done with zero rows.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use context_runtime::forget::{Forgotten, Request};
use context_runtime::shutdown::Shutdown;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// One line of `forget_log`.
#[derive(Debug, Clone, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct Done {
    pub request_id: String,
    pub app_id: String,
    pub install_id: String,
    pub requested_at_us: i64,
    pub requested_by: String,
    pub events_rows: u64,
    pub activity_rows: u64,
    pub dead_letter_rows: u64,
    pub done_at_us: i64,
    pub done_time: u32,
}

/// How long a table's mutations may take before the erasure is tried again.
const MUTATION_PATIENCE: Duration = Duration::from_secs(30 * 60);

/// The tables erased, with the condition that selects an install's rows.
/// The binds are app id, install id, and the request's time.
fn targets() -> [(&'static str, &'static str); 3] {
    [
        ("events", "app_id = ? AND install_id = toUUID(?) AND timestamp_us <= ?"),
        (
            "activity_tags",
            "app_id = ? AND install_id = toUUID(?) AND timestamp_us <= ?",
        ),
        (
            "dead_letters",
            "ifNull(app_id, ?) = ? AND (install_id = ? OR position(payload, ?) > 0 OR position(envelope, ?) > 0)",
        ),
    ]
}

fn bind_for(table: &str, q: clickhouse::query::Query, r: &Request) -> clickhouse::query::Query {
    let install = r.install_id.to_string();
    if table == "dead_letters" {
        q.bind(&r.app_id)
            .bind(&r.app_id)
            .bind(&install)
            .bind(&install)
            .bind(&install)
    } else {
        q.bind(&r.app_id).bind(&install).bind(r.requested_at_us)
    }
}

/// Rows of `r`'s install in `table` of `db`.
async fn count(
    client: &clickhouse::Client,
    db: &str,
    table: &str,
    cond: &str,
    r: &Request,
) -> clickhouse::error::Result<u64> {
    let q = client.query(&format!("SELECT count() FROM `{db}`.`{table}` WHERE {cond}"));
    bind_for(table, q, r).fetch_one::<u64>().await
}

/// Erases one request's rows from every table and waits for the mutations;
/// the rows per table, in [`targets`] order.
pub async fn erase(client: &clickhouse::Client, db: &str, r: &Request) -> anyhow::Result<[u64; 3]> {
    let mut rows = [0u64; 3];
    for (i, (table, cond)) in targets().into_iter().enumerate() {
        let n = count(client, db, table, cond, r).await?;
        rows[i] = n;
        if n == 0 {
            continue;
        }
        let q = client.query(&format!("ALTER TABLE `{db}`.`{table}` DELETE WHERE {cond}"));
        bind_for(table, q, r).execute().await?;
        let started = std::time::Instant::now();
        let mut logged = std::time::Instant::now();
        loop {
            let open: u64 = client
                .query("SELECT count() FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0")
                .bind(db)
                .bind(table)
                .fetch_one()
                .await?;
            if open == 0 {
                break;
            }
            if started.elapsed() > MUTATION_PATIENCE {
                anyhow::bail!("the mutations of `{db}`.`{table}` are not done after {MUTATION_PATIENCE:?}; see system.mutations (latest_fail_reason)");
            }
            if logged.elapsed() > Duration::from_secs(10) {
                tracing::info!(table, open, waited = ?started.elapsed(), "forget: waiting for ClickHouse's mutations");
                logged = std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        metrics::histogram!("sink_forget_mutation_seconds", "table" => table).record(started.elapsed().as_secs_f64());
    }
    Ok(rows)
}

/// The request ids `forget_log` holds.
async fn done_ids(client: &clickhouse::Client, db: &str) -> clickhouse::error::Result<HashSet<String>> {
    let ids: Vec<String> = client
        .query(&format!("SELECT DISTINCT request_id FROM `{db}`.forget_log"))
        .fetch_all()
        .await?;
    Ok(ids.into_iter().collect())
}

/// What the running sink does with the ledger: every request not yet in
/// `forget_log` is erased, oldest first, then recorded; a failure (ClickHouse
/// away) is tried again. Runs until `shutdown`.
pub async fn run_erasure(
    client: clickhouse::Client,
    db: String,
    ledger: Arc<Forgotten>,
    gate: Arc<tokio::sync::RwLock<()>>,
    mut shutdown: Shutdown,
) {
    let mut done: Option<HashSet<String>> = None;
    let mut backoff = context_runtime::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        let wait = match erase_pending(&client, &db, &ledger, &gate, &mut done).await {
            Ok(()) => {
                backoff.reset();
                Duration::from_secs(1)
            }
            Err(e) => {
                metrics::counter!("sink_forget_failures_total").increment(1);
                let wait = backoff.next_wait();
                tracing::warn!(error = %format!("{e:#}"), retry_in = ?wait, "forget: erasing failed; trying again");
                wait
            }
        };
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn erase_pending(
    client: &clickhouse::Client,
    db: &str,
    ledger: &Forgotten,
    gate: &tokio::sync::RwLock<()>,
    done: &mut Option<HashSet<String>>,
) -> anyhow::Result<()> {
    if ledger.is_empty() {
        return Ok(());
    }
    if done.is_none() {
        *done = Some(done_ids(client, db).await?);
    }
    let known = done.as_mut().expect("loaded above");
    let pending: Vec<Request> = ledger
        .requests()
        .into_iter()
        .filter(|r| !known.contains(&r.request_id.to_string()))
        .collect();
    if pending.is_empty() {
        return Ok(());
    }
    // Every flush that filtered its rows before these requests were in the
    // ledger has ended: from here on no row of theirs is inserted.
    drop(gate.write().await);
    for r in pending {
        let started = std::time::Instant::now();
        let rows = erase(client, db, &r).await?;
        let now = context_runtime::clock::now_micros();
        let line = Done {
            request_id: r.request_id.to_string(),
            app_id: r.app_id.clone(),
            install_id: r.install_id.to_string(),
            requested_at_us: r.requested_at_us,
            requested_by: r.requested_by.clone(),
            events_rows: rows[0],
            activity_rows: rows[1],
            dead_letter_rows: rows[2],
            done_at_us: now,
            done_time: u32::try_from(now / 1_000_000).unwrap_or(0),
        };
        let mut insert = client.insert::<Done>("forget_log").await?;
        insert.write(&line).await?;
        insert.end().await?;
        known.insert(line.request_id.clone());
        metrics::counter!("sink_forget_requests_done_total").increment(1);
        tracing::info!(
            app_id = %r.app_id,
            install_id = %r.install_id,
            request_id = %r.request_id,
            events = rows[0],
            activity_tags = rows[1],
            dead_letters = rows[2],
            took = ?started.elapsed(),
            "forget: install erased"
        );
    }
    Ok(())
}

/// One request as `forget status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub request: Request,
    /// `None`: requested, not erased yet.
    pub done: Option<Done>,
}

impl Status {
    pub fn line(&self) -> String {
        let r = &self.request;
        let head = format!(
            "{} app {} install {} requested {} by {}",
            r.request_id,
            r.app_id,
            r.install_id,
            context_runtime::clock::rfc3339(r.requested_at_us),
            r.requested_by
        );
        match &self.done {
            None => format!("{head}: requested, not erased yet (is the sink running?)"),
            Some(d) => format!(
                "{head}: done {} (events {} rows, activity_tags {} rows, dead_letters {} rows)",
                context_runtime::clock::rfc3339(d.done_at_us),
                d.events_rows,
                d.activity_rows,
                d.dead_letter_rows
            ),
        }
    }
}

/// Every request of the ledger (or those whose install or request id is
/// `filter`) with its outcome from `forget_log`.
pub async fn status(c: &Config, filter: Option<&str>) -> anyhow::Result<Vec<Status>> {
    let ledger = context_runtime::forget::follow(
        &c.kafka,
        &c.forget_topic,
        Duration::from_secs(30),
        Arc::new(std::sync::atomic::AtomicBool::new(true)),
    )
    .await?;
    let client = c.clickhouse(false);
    let done: Vec<Done> = client
        .query(&format!(
            "SELECT ?fields FROM `{}`.forget_log ORDER BY done_at_us DESC LIMIT 1 BY request_id",
            c.database
        ))
        .fetch_all()
        .await?;
    let mut by_id: std::collections::HashMap<String, Done> =
        done.into_iter().map(|d| (d.request_id.clone(), d)).collect();
    Ok(ledger
        .requests()
        .into_iter()
        .filter(|r| filter.is_none_or(|f| f == r.install_id.to_string() || f == r.request_id.to_string()))
        .map(|r| Status {
            done: by_id.remove(&r.request_id.to_string()),
            request: r,
        })
        .collect())
}

/// Writes one request per install to the ledger; each is acknowledged by
/// every in-sync replica before the next.
pub async fn request(c: &Config, app: &str, installs: &[uuid::Uuid], by: &str) -> anyhow::Result<Vec<Request>> {
    anyhow::ensure!(
        !c.forget_topic.trim().is_empty(),
        "forget_topic is empty: there is no ledger to write to"
    );
    let writer = context_runtime::forget::Writer::new(&c.kafka, &c.forget_topic)?;
    let mut written = Vec::with_capacity(installs.len());
    for install in installs {
        let r = Request::new(app, *install, by);
        writer.send(&r).await.map_err(anyhow::Error::msg)?;
        written.push(r);
    }
    Ok(written)
}
