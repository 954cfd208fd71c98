//! `sink-clickhouse migrate`: creates the database, tables and views, and adds
//! the columns a newer schema brings. Idempotent; never drops or retypes a
//! column (a type that differs from the DDL is reported as an error).

use std::collections::HashMap;

use crate::ddl;

/// What a migration did or found.
#[derive(Debug, Default)]
pub struct Report {
    /// Statements that changed something.
    pub applied: Vec<String>,
    /// Columns whose type in ClickHouse differs from the DDL.
    pub conflicts: Vec<String>,
    /// Columns in ClickHouse the DDL does not know (kept).
    pub extra: Vec<String>,
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
        let existing: Vec<(String, String)> = client
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(db)
            .bind(table.name)
            .fetch_all()
            .await?;
        if existing.is_empty() {
            let sql = ddl::create_table(db, &table);
            client.query(&sql).execute().await?;
            report.applied.push(sql);
            continue;
        }
        let have: HashMap<&str, &str> = existing.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
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
        for (name, _) in &existing {
            if !table.columns.iter().any(|(n, _)| n == name) {
                report.extra.push(format!("{db}.{}.{name}", table.name));
            }
        }
    }
    let views: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = ? AND engine = 'View'")
        .bind(db)
        .fetch_all()
        .await?;
    for sql in ddl::views(db) {
        let name = sql.split('`').nth(3).unwrap_or_default();
        if !views.iter().any(|v| v == name) {
            client.query(&sql).execute().await?;
            report.applied.push(sql);
        }
    }
    Ok(report)
}
