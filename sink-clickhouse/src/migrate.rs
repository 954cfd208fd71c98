//! `sink-clickhouse migrate`: creates the database, tables and views, adds
//! the columns a newer schema brings, and converts a table whose layout
//! (engine, partition key, sorting key: [`ddl::Layout`]) is older than the
//! DDL's. Idempotent: a second run changes nothing. It never drops or
//! retypes a column (a type that differs from the DDL is reported as an
//! error), and never drops a table holding rows.
//!
//! Converting a table `t` to layout version `v` (the sink may go on
//! inserting into `t` meanwhile; the steps make sure nothing it inserts is
//! lost):
//! 1. the columns the DDL adds are added to `t` first;
//! 2. a lock table `t_migrate_lock` is created (a second migrate finds it and
//!    stops; a lock older than a minute whose run no longer has a query
//!    running on ClickHouse is taken over);
//! 3. the new layout is created as `t_migrating_v` (one left by an
//!    interrupted run is dropped first: it never held the only copy), with
//!    `t`'s columns, and every row of `t` is copied into it;
//! 4. the copy is checked: it holds at least as many distinct rows (by the
//!    new sorting key, which is what duplicates share) as `t` held before
//!    the copy began; otherwise nothing is renamed and migrate fails;
//! 5. `RENAME TABLE t TO t_before_v, t_migrating_v TO t` swaps them;
//! 6. reconciliation: every row of `t_before_v` whose key `t` lacks (the
//!    sink's inserts during the copy) is copied into `t`, twice, a few
//!    seconds apart, and the distinct counts are compared;
//! 7. the old table is kept as `t_before_v`, for the operator to drop once
//!    satisfied (the report says how). Its presence also stops a second
//!    conversion to the same version.
//!
//! A run interrupted anywhere is finished by the next one: a `t_before_v`
//! beside a `t` of the new layout is reconciled again (step 6) on every run
//! until the operator drops it; a `t` missing after an interrupted rename
//! (ClickHouse 18.16 renames two tables one after the other) is taken back
//! from `t_migrating_v` when the copy had been checked, or created empty,
//! and then reconciled from `t_before_v`.

use std::collections::HashMap;

use crate::ddl;

/// What a migration did or found.
#[derive(Debug, Default)]
pub struct Report {
    /// Statements that changed something.
    pub applied: Vec<String>,
    /// Columns whose type in ClickHouse differs from the DDL, and tables
    /// whose layout could not be converted.
    pub conflicts: Vec<String>,
    /// Columns in ClickHouse the DDL does not know (kept).
    pub extra: Vec<String>,
    /// Tables of an older layout kept after their conversion, with their
    /// number of rows: `db.t_before_v`.
    pub kept: Vec<(String, u64)>,
}

/// A table as `system.tables` describes it.
struct Described {
    engine: String,
    partition_key: String,
    sorting_key: String,
}

/// Brings database `db` up to the DDL of this build.
pub async fn migrate(client: &clickhouse::Client, db: &str) -> Result<Report, clickhouse::error::Error> {
    let mut report = Report::default();
    let dbs: Vec<String> = client
        .query("SELECT name FROM system.databases WHERE name = ?")
        .bind(db)
        .fetch_all()
        .await?;
    if dbs.is_empty() {
        let sql = format!("CREATE DATABASE IF NOT EXISTS `{db}`");
        client.query(&sql).execute().await?;
        report.applied.push(sql);
    }
    for table in ddl::tables() {
        let backup = format!("{}_before_{}", table.name, table.layout.version);
        let staging = format!("{}_migrating_{}", table.name, table.layout.version);
        let has_backup = table.layout.version > 1 && exists(client, db, &backup).await?;
        let existing = columns(client, db, table.name).await?;
        if existing.is_empty() {
            // A rename interrupted between its two tables leaves the checked
            // copy under the staging name.
            if has_backup && exists(client, db, &staging).await? {
                let sql = format!("RENAME TABLE `{db}`.`{staging}` TO `{db}`.`{}`", table.name);
                client.query(&sql).execute().await?;
                report.applied.push(sql);
            } else {
                let sql = ddl::create_table(db, &table);
                client.query(&sql).execute().await?;
                report.applied.push(sql);
            }
            if has_backup {
                reconcile(client, db, &table, &backup, 1, &mut report).await?;
            }
            continue;
        }
        let have: HashMap<&str, &str> = existing.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
        let conflicts_before = report.conflicts.len();
        for (name, ty) in &table.columns {
            match have.get(name.as_str()) {
                None => {
                    let sql = format!("ALTER TABLE `{db}`.`{}` ADD COLUMN `{name}` {ty}", table.name);
                    client.query(&sql).execute().await?;
                    report.applied.push(sql);
                }
                Some(t) if *t != ddl::bare_type(ty) => report.conflicts.push(format!(
                    "{db}.{}.{name} is {t} in ClickHouse but {ty} in the schema",
                    table.name
                )),
                Some(_) => {}
            }
        }
        let mut extra = Vec::new();
        for (name, ty) in &existing {
            if !table.columns.iter().any(|(n, _)| n == name) {
                report.extra.push(format!("{db}.{}.{name}", table.name));
                extra.push((name.clone(), ty.clone()));
            }
        }
        let Some(d) = describe(client, db, table.name).await? else {
            continue;
        };
        let layout = &table.layout;
        if layout.matches(&d.engine, &d.partition_key, &d.sorting_key) {
            if has_backup {
                // An earlier conversion: what its run may not have finished.
                reconcile(client, db, &table, &backup, 1, &mut report).await?;
            }
            continue;
        }
        let found = format!(
            "{} PARTITION BY ({}) ORDER BY ({})",
            d.engine, d.partition_key, d.sorting_key
        );
        if layout.version <= 1 {
            report.conflicts.push(format!(
                "{db}.{} is {found}, the DDL says {}; there is no older layout to convert it from",
                table.name,
                layout.clause()
            ));
        } else if report.conflicts.len() > conflicts_before {
            report.conflicts.push(format!(
                "{db}.{} is {found}, older than layout {}, and is not converted while its columns conflict",
                table.name, layout.version
            ));
        } else {
            convert(client, db, &table, &extra, &found, &mut report).await?;
        }
    }
    let existing_views: Vec<(String, String)> = client
        .query("SELECT name, create_table_query FROM system.tables WHERE database = ? AND engine = 'View'")
        .bind(db)
        .fetch_all()
        .await?;
    for view in ddl::views(db) {
        match existing_views.iter().find(|(name, _)| name == view.name) {
            Some((_, query)) if view.is_current(query) => {}
            Some(_) => {
                // A view holds no rows: the older definition is replaced.
                let drop = format!("DROP TABLE IF EXISTS `{db}`.`{}`", view.name);
                client.query(&drop).execute().await?;
                report.applied.push(drop);
                client.query(&view.create).execute().await?;
                report.applied.push(view.create.clone());
            }
            None => {
                client.query(&view.create).execute().await?;
                report.applied.push(view.create.clone());
            }
        }
    }
    Ok(report)
}

async fn columns(
    client: &clickhouse::Client,
    db: &str,
    table: &str,
) -> Result<Vec<(String, String)>, clickhouse::error::Error> {
    client
        .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
        .bind(db)
        .bind(table)
        .fetch_all()
        .await
}

async fn describe(
    client: &clickhouse::Client,
    db: &str,
    table: &str,
) -> Result<Option<Described>, clickhouse::error::Error> {
    let rows: Vec<(String, String, String)> = client
        .query("SELECT engine, partition_key, sorting_key FROM system.tables WHERE database = ? AND name = ?")
        .bind(db)
        .bind(table)
        .fetch_all()
        .await?;
    Ok(rows
        .into_iter()
        .next()
        .map(|(engine, partition_key, sorting_key)| Described {
            engine,
            partition_key,
            sorting_key,
        }))
}

async fn exists(client: &clickhouse::Client, db: &str, table: &str) -> Result<bool, clickhouse::error::Error> {
    let n: u64 = client
        .query("SELECT count() FROM system.tables WHERE database = ? AND name = ?")
        .bind(db)
        .bind(table)
        .fetch_one()
        .await?;
    Ok(n > 0)
}

/// Distinct rows of `db.table` by `key` (what duplicates share).
async fn distinct(
    client: &clickhouse::Client,
    db: &str,
    table: &str,
    key: &str,
) -> Result<u64, clickhouse::error::Error> {
    client
        .query(&format!("SELECT uniqExact({key}) FROM `{db}`.`{table}`"))
        .fetch_one()
        .await
}

/// Converts `db.<table>` (of the older layout `found`) to the DDL's layout;
/// the module's documentation has the steps.
async fn convert(
    client: &clickhouse::Client,
    db: &str,
    table: &ddl::Table,
    extra: &[(String, String)],
    found: &str,
    report: &mut Report,
) -> Result<(), clickhouse::error::Error> {
    let layout = &table.layout;
    let name = table.name;
    let backup = format!("{name}_before_{}", layout.version);
    let staging = format!("{name}_migrating_{}", layout.version);
    if exists(client, db, &backup).await? {
        report.conflicts.push(format!(
            "{db}.{name} is {found}, older than layout {}, but {db}.{backup} exists from an earlier conversion: \
             rename or drop it, then run migrate again",
            layout.version
        ));
        return Ok(());
    }
    // The DDL's columns (added to the table above) and the ones it kept.
    let mut all: Vec<(String, String)> = table.columns.clone();
    all.extend(extra.iter().cloned());
    let list: Vec<String> = all.iter().map(|(n, _)| format!("`{n}`")).collect();
    let list = list.join(", ");
    let key = &layout.sorting_key;

    let lock = format!("{name}_migrate_lock");
    if !take_lock(client, db, &lock, &staging, report).await? {
        return Ok(());
    }
    let drop = format!("DROP TABLE IF EXISTS `{db}`.`{staging}`");
    client.query(&drop).execute().await?;
    let create = ddl::create_table_as(db, &staging, &all, layout);
    client.query(&create).execute().await?;
    report.applied.push(create);

    let before = distinct(client, db, name, key).await?;
    let copy = format!("INSERT INTO `{db}`.`{staging}` ({list}) SELECT {list} FROM `{db}`.`{name}`");
    client.query(&copy).execute().await?;
    report.applied.push(copy);
    let copied = distinct(client, db, &staging, key).await?;
    if copied < before {
        report.conflicts.push(format!(
            "converting {db}.{name}: the copy {db}.{staging} holds {copied} distinct rows, {db}.{name} {before}; \
             nothing was renamed (run migrate again; it starts the copy afresh)"
        ));
        drop_lock(client, db, &lock).await?;
        return Ok(());
    }

    let rename = format!("RENAME TABLE `{db}`.`{name}` TO `{db}`.`{backup}`, `{db}`.`{staging}` TO `{db}`.`{name}`");
    client.query(&rename).execute().await?;
    report.applied.push(rename);
    drop_lock(client, db, &lock).await?;

    // Twice: an insert the rename waited for lands in the old table.
    reconcile(client, db, table, &backup, 2, report).await?;
    Ok(())
}

/// How long a lock may stand without a query of its run on ClickHouse
/// before another migrate takes it over.
const STALE_LOCK_SECS: u32 = 60;
/// The pause between two reconciliation passes after a swap.
const RECONCILE_PAUSE: std::time::Duration = std::time::Duration::from_secs(3);

/// Takes `db.lock` for converting a table through `staging`: false (with a
/// conflict in the report) while another migrate holds it.
async fn take_lock(
    client: &clickhouse::Client,
    db: &str,
    lock: &str,
    staging: &str,
    report: &mut Report,
) -> Result<bool, clickhouse::error::Error> {
    let create = format!("CREATE TABLE `{db}`.`{lock}` (taken DateTime) ENGINE = Log");
    for _ in 0..2 {
        match client.query(&create).execute().await {
            Ok(()) => {
                client
                    .query(&format!("INSERT INTO `{db}`.`{lock}` SELECT now()"))
                    .execute()
                    .await?;
                return Ok(true);
            }
            Err(e) if !exists(client, db, lock).await? => return Err(e),
            Err(_) => {}
        }
        // Held: by a run still at work, or by one that died.
        let age: u32 = client
            .query(&format!(
                "SELECT toUInt32(now()) - toUInt32(max(taken)) FROM `{db}`.`{lock}`"
            ))
            .fetch_one()
            .await?;
        let running: u64 = client
            .query("SELECT count() FROM system.processes WHERE position(query, ?) > 0 AND position(query, 'system.processes') = 0")
            .bind(staging)
            .fetch_one()
            .await?;
        if age < STALE_LOCK_SECS || running > 0 {
            report.conflicts.push(format!(
                "another migrate is converting {db}.{staging} (its lock {db}.{lock} was taken {age} s ago): \
                 wait for it; if no migrate runs, DROP TABLE `{db}`.`{lock}` and run migrate again"
            ));
            return Ok(false);
        }
        let sql = format!("DROP TABLE IF EXISTS `{db}`.`{lock}`");
        client.query(&sql).execute().await?;
        report
            .applied
            .push(format!("{sql} (a lock left {age} s ago by a migrate that stopped)"));
    }
    report.conflicts.push(format!(
        "{db}.{lock} is taken again each time it is dropped: another migrate runs"
    ));
    Ok(false)
}

async fn drop_lock(client: &clickhouse::Client, db: &str, lock: &str) -> Result<(), clickhouse::error::Error> {
    client
        .query(&format!("DROP TABLE IF EXISTS `{db}`.`{lock}`"))
        .execute()
        .await
}

/// Copies every row of `db.backup` (the table of the older layout) whose
/// key `db.<table>` lacks into it, `passes` times `RECONCILE_PAUSE` apart,
/// then compares their distinct rows and reports the old table as kept.
async fn reconcile(
    client: &clickhouse::Client,
    db: &str,
    table: &ddl::Table,
    backup: &str,
    passes: usize,
    report: &mut Report,
) -> Result<(), clickhouse::error::Error> {
    let name = table.name;
    let key = &table.layout.sorting_key;
    let now_columns = columns(client, db, name).await?;
    let list: Vec<String> = columns(client, db, backup)
        .await?
        .into_iter()
        .filter(|(n, _)| now_columns.iter().any(|(m, _)| m == n))
        .map(|(n, _)| format!("`{n}`"))
        .collect();
    let list = list.join(", ");
    let sql = format!(
        "INSERT INTO `{db}`.`{name}` ({list}) SELECT {list} FROM `{db}`.`{backup}` \
         WHERE ({key}) NOT IN (SELECT {key} FROM `{db}`.`{name}`)"
    );
    let count = format!("SELECT count() FROM `{db}`.`{name}`");
    let rows_before: u64 = client.query(&count).fetch_one().await?;
    for pass in 0..passes {
        if pass > 0 {
            tokio::time::sleep(RECONCILE_PAUSE).await;
        }
        client.query(&sql).execute().await?;
    }
    let rows_after: u64 = client.query(&count).fetch_one().await?;
    if rows_after > rows_before {
        report.applied.push(format!(
            "INSERT INTO `{db}`.`{name}` SELECT … FROM `{db}`.`{backup}` WHERE ({key}) NOT IN `{db}`.`{name}` \
             ({} rows it lacked)",
            rows_after - rows_before
        ));
    }
    let kept = distinct(client, db, backup, key).await?;
    let now = distinct(client, db, name, key).await?;
    if now < kept {
        report.conflicts.push(format!(
            "converting {db}.{name}: it holds {now} distinct rows, the old table {db}.{backup} {kept}; \
             run migrate again (it copies the rows {db}.{name} lacks)"
        ));
    }
    // Reported after the conversion, and again whenever it had to be finished.
    if passes > 1 || rows_after > rows_before || now < kept {
        let rows: u64 = client
            .query(&format!("SELECT count() FROM `{db}`.`{backup}`"))
            .fetch_one()
            .await?;
        report.kept.push((format!("{db}.{backup}"), rows));
    }
    Ok(())
}
