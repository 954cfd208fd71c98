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
//! 2. the new layout is created as `t_migrating_v` (one left by an
//!    interrupted run is dropped first: it never held the only copy), with
//!    `t`'s columns, and every row of `t` is copied into it;
//! 3. the copy is checked: it holds at least as many distinct rows (by the
//!    new sorting key, which is what duplicates share) as `t` held before
//!    the copy began; otherwise nothing is renamed and migrate fails;
//! 4. one `RENAME TABLE t TO t_before_v, t_migrating_v TO t` swaps them;
//! 5. the rows inserted into the old table while it was copied (its parts
//!    written since the copy began) are copied again; the duplicates this
//!    makes merge away, which is what the new layout is for;
//! 6. the old table is kept as `t_before_v`, for the operator to drop once
//!    satisfied (the report says how). Its presence also stops a second
//!    conversion to the same version.

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
        let existing = columns(client, db, table.name).await?;
        if existing.is_empty() {
            let sql = ddl::create_table(db, &table);
            client.query(&sql).execute().await?;
            report.applied.push(sql);
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

    let drop = format!("DROP TABLE IF EXISTS `{db}`.`{staging}`");
    client.query(&drop).execute().await?;
    let create = ddl::create_table_as(db, &staging, &all, layout);
    client.query(&create).execute().await?;
    report.applied.push(create);

    let started: u32 = client.query("SELECT toUInt32(now())").fetch_one().await?;
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
        return Ok(());
    }

    let rename = format!("RENAME TABLE `{db}`.`{name}` TO `{db}`.`{backup}`, `{db}`.`{staging}` TO `{db}`.`{name}`");
    client.query(&rename).execute().await?;
    report.applied.push(rename);

    // What the sink inserted into the old table during the copy is in parts
    // written since it began (parts merged since then too: copied twice,
    // merged away).
    let catch_up = format!(
        "INSERT INTO `{db}`.`{name}` ({list}) SELECT {list} FROM `{db}`.`{backup}` WHERE _part IN \
         (SELECT name FROM system.parts WHERE database = ? AND table = ? AND active AND modification_time >= toDateTime(?))"
    );
    client
        .query(&catch_up)
        .bind(db)
        .bind(backup.as_str())
        .bind(started)
        .execute()
        .await?;
    report.applied.push(format!(
        "INSERT INTO `{db}`.`{name}` SELECT … FROM `{db}`.`{backup}` (parts written during the copy)"
    ));

    let kept = distinct(client, db, &backup, key).await?;
    let now = distinct(client, db, name, key).await?;
    if now < kept {
        report.conflicts.push(format!(
            "converting {db}.{name}: it holds {now} distinct rows, the old table {db}.{backup} {kept}; \
             copy the missing ones with INSERT INTO `{db}`.`{name}` ({list}) SELECT {list} FROM `{db}`.`{backup}` \
             (duplicates merge away)"
        ));
    }
    let rows: u64 = client
        .query(&format!("SELECT count() FROM `{db}`.`{backup}`"))
        .fetch_one()
        .await?;
    report.kept.push((format!("{db}.{backup}"), rows));
    Ok(())
}
