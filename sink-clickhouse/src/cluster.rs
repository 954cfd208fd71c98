//! The schema on a ClickHouse cluster: `sink-clickhouse migrate --cluster NAME`.
//!
//! Every statement runs `ON CLUSTER NAME` (ClickHouse's distributed DDL, which
//! needs ZooKeeper), and only when some server of the cluster lacks what it
//! makes, so a second run changes nothing:
//! - the database on every server;
//! - `events`, `activity_tags` and `dead_letters` as Replicated tables named
//!   `<table>_local` (one replication path per shard,
//!   `/clickhouse/tables/{shard}/<db>/<table>_local`, the `{shard}` and
//!   `{replica}` macros of each server), and under the table's own name a
//!   `Distributed` table over them for reads, sharded by the install
//!   ([`sharding_key`]): every duplicate of a row is on the row's shard, where
//!   ReplacingMergeTree merges it;
//! - `sink_ledger` and `forget_log`, small and read whole, as one Replicated
//!   table with a replica on every server (`/clickhouse/tables/all/…`);
//! - the views, over the Distributed tables, on every server;
//! - a column the schema adds, on every server's local and Distributed table.
//!
//! Table layouts are created at the DDL's current version; converting a
//! cluster table of an older layout, or a single-node table into a cluster
//! one, is refused with a conflict (the single-node [`crate::migrate`] does
//! conversions).

use std::collections::{BTreeMap, BTreeSet};

use crate::ddl::{self, Table};

/// The tables the sink shards by install: the others have a replica everywhere.
pub const SHARDED: [&str; 3] = ["events", "activity_tags", "dead_letters"];

/// The suffix of a sharded table's Replicated table on each server.
pub const LOCAL_SUFFIX: &str = "_local";

/// The expression a sharded table's rows are spread over the shards by, as
/// the Distributed table names it: the install's id as text, through
/// `halfMD5` (the first 8 bytes of its MD5, big-endian), modulo the number of
/// shards (all of weight 1). [`shard_of`] computes the same in the sink.
pub fn sharding_key(table: &str) -> &'static str {
    if table == "dead_letters" {
        // A letter's install is text, empty when its record had no key.
        "halfMD5(install_id)"
    } else {
        "halfMD5(toString(install_id))"
    }
}

/// The shard (0-based) of a row whose install id reads `install_id`, among
/// `shards`: what the Distributed table's [`sharding_key`] picks.
pub fn shard_of(install_id: &str, shards: usize) -> usize {
    use md5::{Digest, Md5};
    let digest = Md5::digest(install_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % shards.max(1) as u64) as usize
}

/// One server of the cluster, as `system.clusters` lists it.
#[derive(Debug, Clone, clickhouse::Row, serde::Deserialize)]
struct Server {
    shard_num: u32,
    replica_num: u32,
    host_address: String,
    port: u16,
}

impl Server {
    fn address(&self) -> String {
        format!("{}:{}", self.host_address, self.port)
    }
}

/// What one server holds of the database: its tables' engines and columns.
#[derive(Debug, Default)]
struct Holdings {
    database: bool,
    engines: BTreeMap<String, String>,
    columns: BTreeMap<String, BTreeMap<String, String>>,
    views: BTreeMap<String, String>,
}

/// The engine with the replication path and replica of `path`.
fn replicated(engine: &str, path: &str) -> String {
    let (name, params) = match engine.split_once('(') {
        Some((name, rest)) => (name, rest.trim_end_matches(')').trim()),
        None => (engine, ""),
    };
    let params = if params.is_empty() {
        String::new()
    } else {
        format!(", {params}")
    };
    format!("Replicated{name}('{path}', '{{replica}}'{params})")
}

/// What one table of the schema is on the cluster: (name, CREATE) pairs, the
/// Replicated table first.
pub fn cluster_tables(db: &str, cluster: &str, table: &Table) -> Vec<(String, String)> {
    let columns: Vec<String> = table.columns.iter().map(|(n, t)| format!("    `{n}` {t}")).collect();
    let layout = &table.layout;
    let partition = if layout.partition_key.is_empty() {
        String::new()
    } else {
        format!(" PARTITION BY {}", layout.partition_key)
    };
    let sharded = SHARDED.contains(&table.name);
    let local = if sharded {
        format!("{}{LOCAL_SUFFIX}", table.name)
    } else {
        table.name.to_owned()
    };
    let path = if sharded {
        format!("/clickhouse/tables/{{shard}}/{db}/{local}")
    } else {
        format!("/clickhouse/tables/all/{db}/{local}")
    };
    let mut out = vec![(
        local.clone(),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.`{local}` ON CLUSTER `{cluster}` (\n{}\n) ENGINE = {}{partition} ORDER BY ({})",
            columns.join(",\n"),
            replicated(layout.engine, &path),
            layout.sorting_key
        ),
    )];
    if sharded {
        out.push((
            table.name.to_owned(),
            // Its own column list, not `AS` the local table: right after an
            // ALTER one replica of a shard may not have the new column yet.
            format!(
                "CREATE TABLE IF NOT EXISTS `{db}`.`{}` ON CLUSTER `{cluster}` (\n{}\n) \
                 ENGINE = Distributed(`{cluster}`, `{db}`, `{local}`, {})",
                table.name,
                columns.join(",\n"),
                sharding_key(table.name)
            ),
        ));
    }
    out
}

/// The engine each table of [`cluster_tables`] must have (by name prefix).
fn expected_engine(name: &str) -> &'static str {
    if SHARDED.contains(&name) {
        "Distributed"
    } else {
        "Replicated"
    }
}

async fn servers(client: &clickhouse::Client, cluster: &str) -> Result<Vec<Server>, clickhouse::error::Error> {
    client
        .query("SELECT shard_num, replica_num, host_address, port FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num")
        .bind(cluster)
        .fetch_all()
        .await
}

/// What `server` holds, read through `remote()` from the server `client` reaches.
async fn holdings(
    client: &clickhouse::Client,
    server: &Server,
    db: &str,
    user: &str,
    password: &str,
) -> Result<Holdings, clickhouse::error::Error> {
    let quoted = |s: &str| s.replace('\\', "\\\\").replace('\'', "\\'");
    let (user, password) = (quoted(user), quoted(password));
    let remote = |table: &str| format!("remote('{}', system.{table}, '{user}', '{password}')", server.address());
    let mut h = Holdings::default();
    let dbs: u64 = client
        .query(&format!("SELECT count() FROM {} WHERE name = ?", remote("databases")))
        .bind(db)
        .fetch_one()
        .await?;
    h.database = dbs > 0;
    let tables: Vec<(String, String, String)> = client
        .query(&format!(
            "SELECT name, engine, create_table_query FROM {} WHERE database = ?",
            remote("tables")
        ))
        .bind(db)
        .fetch_all()
        .await?;
    for (name, engine, query) in tables {
        if engine == "View" {
            h.views.insert(name, query);
        } else {
            h.engines.insert(name, engine);
        }
    }
    let columns: Vec<(String, String, String)> = client
        .query(&format!(
            "SELECT table, name, type FROM {} WHERE database = ?",
            remote("columns")
        ))
        .bind(db)
        .fetch_all()
        .await?;
    for (table, name, ty) in columns {
        h.columns.entry(table).or_default().insert(name, ty);
    }
    Ok(h)
}

/// Brings database `db` on every server of `cluster` up to the DDL of this
/// build (see the module's documentation). `user` and `password` reach every
/// server (`remote()` reads their system tables); `each` holds a client per
/// server (`clickhouse_shards`), for what cannot run ON CLUSTER.
/// Runs `statements` on every server of `each`, in order.
async fn each_server(
    each: &[clickhouse::Client],
    statements: &[String],
    report: &mut crate::migrate::Report,
) -> Result<(), anyhow::Error> {
    anyhow::ensure!(
        !each.is_empty(),
        "changing a Distributed table or a view needs every server's URL: set clickhouse_shards \
         (SINK_CLICKHOUSE_SHARDS) to the cluster's servers"
    );
    for sql in statements {
        for client in each {
            client.query(sql).execute().await?;
        }
        report
            .applied
            .push(format!("{sql} (on each of {} servers)", each.len()));
    }
    Ok(())
}

pub async fn migrate(
    client: &clickhouse::Client,
    each: &[clickhouse::Client],
    db: &str,
    cluster: &str,
    user: &str,
    password: &str,
) -> Result<crate::migrate::Report, anyhow::Error> {
    let mut report = crate::migrate::Report::default();
    let servers = servers(client, cluster).await?;
    anyhow::ensure!(
        !servers.is_empty(),
        "ClickHouse has no cluster `{cluster}` in system.clusters: define it under <remote_servers> \
         on every server (scripts/stack up --cluster does)"
    );
    let mut held = Vec::new();
    for s in &servers {
        let h = holdings(client, s, db, user, password).await.map_err(|e| {
            anyhow::anyhow!(
                "server {} (shard {}, replica {}) of cluster `{cluster}` does not answer ({e}); \
                 ON CLUSTER statements need every server up",
                s.address(),
                s.shard_num,
                s.replica_num
            )
        })?;
        held.push(h);
    }
    let run = |sql: String, report: &mut crate::migrate::Report| {
        let client = client.clone();
        report.applied.push(sql.clone());
        async move { client.query(&sql).execute().await }
    };
    if held.iter().any(|h| !h.database) {
        run(
            format!("CREATE DATABASE IF NOT EXISTS `{db}` ON CLUSTER `{cluster}`"),
            &mut report,
        )
        .await?;
    }
    // A view's columns are fixed when it is made: one over a table that
    // gained columns is made again.
    let mut views_stale = false;
    for table in ddl::tables() {
        for (name, create) in cluster_tables(db, cluster, &table) {
            let mut missing = false;
            let mut wrong = BTreeSet::new();
            for (s, h) in servers.iter().zip(&held) {
                match h.engines.get(&name) {
                    None => missing = true,
                    Some(engine) if !engine.starts_with(expected_engine(&name)) => {
                        wrong.insert(format!("{} on {}", engine, s.address()));
                    }
                    Some(_) => {}
                }
            }
            if !wrong.is_empty() {
                report.conflicts.push(format!(
                    "{db}.{name} is {} where the cluster schema has a {} table: a single-node table is \
                     not converted into a cluster one (copy its rows with INSERT … SELECT into the \
                     cluster tables made under other names, then rename)",
                    wrong.into_iter().collect::<Vec<_>>().join(", "),
                    expected_engine(&name)
                ));
                continue;
            }
            if missing {
                run(create.clone(), &mut report).await?;
            }
            // Columns the schema adds, on every server that lacks them.
            let mut add = BTreeSet::new();
            for (s, h) in servers.iter().zip(&held) {
                let have = h.columns.get(&name);
                for (col, ty) in &table.columns {
                    match have.and_then(|c| c.get(col)) {
                        None if have.is_some() => {
                            add.insert((col.clone(), ty.clone()));
                        }
                        Some(t) if t != ddl::bare_type(ty) => report.conflicts.push(format!(
                            "{db}.{name}.{col} is {t} on {} but {ty} in the schema",
                            s.address()
                        )),
                        _ => {}
                    }
                }
            }
            if !add.is_empty() && expected_engine(&name) == "Distributed" {
                // ClickHouse 18.16 refuses ALTER or DROP … ON CLUSTER of a
                // table that is not replicated on a cluster whose shards are.
                // A Distributed table holds no rows of its own (the sink never
                // inserts through it): it is made again on each server, and
                // the views over it.
                let here = create.replace(&format!(" ON CLUSTER `{cluster}`"), "");
                each_server(
                    each,
                    &[format!("DROP TABLE IF EXISTS `{db}`.`{name}`"), here],
                    &mut report,
                )
                .await?;
                views_stale = true;
                continue;
            }
            for (col, ty) in add {
                run(
                    format!("ALTER TABLE `{db}`.`{name}` ON CLUSTER `{cluster}` ADD COLUMN `{col}` {ty}"),
                    &mut report,
                )
                .await?;
            }
        }
    }
    for view in ddl::views(db) {
        let create = view.create.replacen(
            &format!("`{db}`.`{}` AS", view.name),
            &format!("`{db}`.`{}` ON CLUSTER `{cluster}` AS", view.name),
            1,
        );
        let stale = held.iter().any(|h| {
            h.views
                .get(view.name)
                .is_some_and(|q| views_stale || !view.is_current(q))
        });
        if stale {
            // Per server, for the reason above.
            each_server(
                each,
                &[
                    format!("DROP TABLE IF EXISTS `{db}`.`{}`", view.name),
                    view.create.clone(),
                ],
                &mut report,
            )
            .await?;
        } else if held.iter().any(|h| !h.views.contains_key(view.name)) {
            run(create, &mut report).await?;
        }
    }
    Ok(report)
}

/// A row's install as the sharding key reads it.
pub trait ShardKey {
    /// The text [`sharding_key`] hashes: the install's id as ClickHouse
    /// prints it; empty for a row of no install.
    fn shard_key(&self) -> String;
}

/// Servers that hold the same rows, and the index of the one that answered
/// last (tried first next time).
type Replicas = (Vec<clickhouse::Client>, std::sync::atomic::AtomicUsize);

/// The servers of a cluster: per shard its replicas, and every server in
/// one list for the tables with a replica on each.
pub struct Shards {
    shards: Vec<Replicas>,
    everywhere: Replicas,
}

/// Where the sink's inserts go: one server, or the shards of a cluster.
#[derive(Clone)]
pub enum Writer {
    One(std::sync::Arc<clickhouse::Client>),
    Cluster(std::sync::Arc<Shards>),
}

impl Writer {
    /// The writer `c` describes: `clickhouse_shards` when set, with
    /// `insert_quorum`; `clickhouse_url` otherwise.
    pub fn from_config(c: &crate::Config) -> Writer {
        let shards = c.shards();
        if shards.is_empty() {
            return Writer::One(std::sync::Arc::new(c.clickhouse(true).with_database(&c.database)));
        }
        let client = |url: &String| {
            let client = c.clickhouse_at(url, true).with_database(&c.database);
            if c.insert_quorum > 0 {
                client.with_option("insert_quorum", c.insert_quorum.to_string())
            } else {
                client
            }
        };
        let replicas = |urls: Vec<&String>| -> Replicas {
            (
                urls.into_iter().map(client).collect(),
                std::sync::atomic::AtomicUsize::new(0),
            )
        };
        Writer::Cluster(std::sync::Arc::new(Shards {
            shards: shards.iter().map(|urls| replicas(urls.iter().collect())).collect(),
            everywhere: replicas(shards.iter().flatten().collect()),
        }))
    }
}

/// The rows of `indices` into `table` on one shard: the replica that
/// answered last first, the next one on a failure a retry may cure (a
/// replica down, read-only without ZooKeeper, timing out). A refused row or
/// table is the same on every replica and returned at once. Every replica
/// failing is the shard's outage: the error, and the caller keeps the batch.
async fn insert_on_shard<F, Fut>(shard: &str, replicas: &Replicas, once: &F) -> Result<(), clickhouse::error::Error>
where
    F: Fn(clickhouse::Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), clickhouse::error::Error>>,
{
    use std::sync::atomic::Ordering;
    let (clients, preferred) = replicas;
    let first = preferred.load(Ordering::Relaxed);
    let mut last = None;
    for attempt in 0..clients.len() {
        let k = (first + attempt) % clients.len();
        match once(clients[k].clone()).await {
            Ok(()) => {
                preferred.store(k, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) if crate::service::classify(&e) == crate::service::Failure::Transient => {
                metrics::counter!("sink_replica_failovers_total", "shard" => shard.to_owned()).increment(1);
                tracing::warn!(error = %e, shard, replica = k + 1, "ClickHouse replica failed; trying the next of its shard");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(clickhouse::error::Error::TimedOut))
}

/// Inserts `rows` into `table` through `writer`: on a cluster, each row on
/// its install's shard (`<table>_local`), never on another; tables that are
/// not sharded on any server (they are replicated to all).
pub async fn insert_routed<R, F, Fut>(
    writer: &Writer,
    table: &str,
    rows: &[R],
    once: F,
) -> Result<(), clickhouse::error::Error>
where
    R: ShardKey,
    F: Fn(clickhouse::Client, String, Vec<usize>) -> Fut,
    Fut: std::future::Future<Output = Result<(), clickhouse::error::Error>>,
{
    match writer {
        Writer::One(client) => once((**client).clone(), table.to_owned(), (0..rows.len()).collect()).await,
        Writer::Cluster(cluster) if !SHARDED.contains(&table) => {
            // Every server holds a replica: any of them.
            let all: Vec<usize> = (0..rows.len()).collect();
            insert_on_shard("all", &cluster.everywhere, &|c| once(c, table.to_owned(), all.clone())).await
        }
        Writer::Cluster(cluster) => {
            let n = cluster.shards.len();
            let mut by_shard = vec![Vec::new(); n];
            for (i, row) in rows.iter().enumerate() {
                by_shard[shard_of(&row.shard_key(), n)].push(i);
            }
            let local = format!("{table}{LOCAL_SUFFIX}");
            for (s, indices) in by_shard.into_iter().enumerate() {
                if indices.is_empty() {
                    continue;
                }
                let name = (s + 1).to_string();
                insert_on_shard(&name, &cluster.shards[s], &|c| once(c, local.clone(), indices.clone())).await?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_chosen_as_half_md5_picks_them() {
        // ClickHouse 18.16: SELECT halfMD5('abc') = 10376663631224000432.
        assert_eq!(10376663631224000432u64 % 2, shard_of("abc", 2) as u64);
        assert_eq!(10376663631224000432u64 % 3, shard_of("abc", 3) as u64);
        assert_eq!(shard_of("anything", 1), 0);
    }

    #[test]
    fn cluster_tables_are_replicated_and_distributed_on_the_cluster() {
        let tables = ddl::tables();
        let events = tables.iter().find(|t| t.name == "events").unwrap();
        let made = cluster_tables("context", "context", events);
        assert_eq!(made.len(), 2);
        assert_eq!(made[0].0, "events_local");
        assert!(made[0].1.contains(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/context/events_local', '{replica}')"
        ));
        assert!(made[0].1.contains("ON CLUSTER `context`"));
        assert!(made[1]
            .1
            .contains("ENGINE = Distributed(`context`, `context`, `events_local`, halfMD5(toString(install_id)))"));
        assert!(made[1].1.contains("`battery_level` Nullable(Float64)"));
        let tags = tables.iter().find(|t| t.name == "activity_tags").unwrap();
        assert!(cluster_tables("context", "c", tags)[0]
            .1
            .contains("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/context/activity_tags_local', '{replica}', tagged_at_us)"));
        let ledger = tables.iter().find(|t| t.name == "sink_ledger").unwrap();
        let made = cluster_tables("context", "c", ledger);
        assert_eq!(made.len(), 1);
        assert!(made[0].1.contains("'/clickhouse/tables/all/context/sink_ledger'"));
    }
}
