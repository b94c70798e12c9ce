//! Embedded, versioned schema migrations.
//!
//! The SQL files in `src/db/migrations/` are compiled into the binary. Each
//! runs in its own transaction with `search_path` set to the service's
//! schema, and is recorded in `schema_migrations` in the same transaction.
//! A session advisory lock (key derived from the schema name) serialises
//! concurrent `migrate` runs, so two started at the same moment both succeed
//! and each migration is applied once. [`ensure_current`] is the check every
//! other command makes before touching the schema.

use postgres::Client;

use super::DbError;

/// One embedded migration.
pub struct Migration {
    /// Version, strictly increasing from 1.
    pub version: i32,
    /// Short name (the file name).
    pub name: &'static str,
    /// The SQL, run with `search_path` set to the schema.
    pub sql: &'static str,
}

/// Every migration this binary knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "0002_leader_loop",
        sql: include_str!("migrations/0002_leader_loop.sql"),
    },
    Migration {
        version: 3,
        name: "0003_security",
        sql: include_str!("migrations/0003_security.sql"),
    },
    Migration {
        version: 4,
        name: "0004_fair_scheduling",
        sql: include_str!("migrations/0004_fair_scheduling.sql"),
    },
    Migration {
        version: 5,
        name: "0005_shards",
        sql: include_str!("migrations/0005_shards.sql"),
    },
    Migration {
        version: 6,
        name: "0006_due_plans",
        sql: include_str!("migrations/0006_due_plans.sql"),
    },
    Migration {
        version: 7,
        name: "0007_api",
        sql: include_str!("migrations/0007_api.sql"),
    },
    Migration {
        version: 8,
        name: "0008_rule_filters",
        sql: include_str!("migrations/0008_rule_filters.sql"),
    },
    Migration {
        version: 9,
        name: "0009_delivery_controls",
        sql: include_str!("migrations/0009_delivery_controls.sql"),
    },
    Migration {
        version: 10,
        name: "0010_ordered_visibility",
        sql: include_str!("migrations/0010_ordered_visibility.sql"),
    },
    Migration {
        version: 11,
        name: "0011_secrets_audit",
        sql: include_str!("migrations/0011_secrets_audit.sql"),
    },
    Migration {
        version: 12,
        name: "0012_event_types",
        sql: include_str!("migrations/0012_event_types.sql"),
    },
];

/// The schema version this binary needs.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Applies every pending migration to `schema` on `client`; returns the
/// versions applied (empty when already current). Creates the schema when
/// missing. Refuses a schema newer than this binary.
pub fn run(client: &mut Client, schema: &str) -> Result<Vec<i32>, DbError> {
    let key = super::lock_keys::derive_key(&format!("notification-reconciler.migrate.{schema}"));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .map_err(DbError::query("taking the migration lock"))?;
    let result = apply_pending(client, schema);
    // Unlock on every path; a broken connection releases it anyway.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&key]);
    result
}

fn apply_pending(client: &mut Client, schema: &str) -> Result<Vec<i32>, DbError> {
    let ident = quote_ident(schema);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {ident};
             CREATE TABLE IF NOT EXISTS {ident}.schema_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );"
        ))
        .map_err(DbError::query("creating the schema"))?;
    let found = current_version(client, schema)?;
    if found > latest_version() {
        return Err(DbError::TooNew {
            schema: schema.to_string(),
            found,
            expected: latest_version(),
        });
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        let mut tx = client
            .transaction()
            .map_err(DbError::query("starting a migration"))?;
        tx.batch_execute(&format!(
            "SET LOCAL search_path TO {ident}; SET LOCAL statement_timeout = 0;"
        ))
        .map_err(DbError::query("preparing a migration"))?;
        tx.batch_execute(m.sql)
            .map_err(DbError::query("applying a migration"))?;
        tx.execute(
            &format!("INSERT INTO {ident}.schema_migrations (version, name) VALUES ($1, $2)"),
            &[&m.version, &m.name],
        )
        .map_err(DbError::query("recording a migration"))?;
        tx.commit()
            .map_err(DbError::query("committing a migration"))?;
        log::info!("applied migration {} ({})", m.version, m.name);
        applied.push(m.version);
    }
    Ok(applied)
}

/// Settings the schema enforces itself, written by `migrate` from the
/// config after the migrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaSettings {
    /// `delivery.max_payload_bytes`: the largest payload `enqueue_event`
    /// accepts.
    pub max_payload_bytes: i64,
}

/// Stores `settings` in the schema's `settings` row (what `enqueue_event`
/// reads); returns whether the value changed.
pub fn write_settings(
    client: &mut Client,
    schema: &str,
    settings: SchemaSettings,
) -> Result<bool, DbError> {
    let cap = i32::try_from(settings.max_payload_bytes).unwrap_or(i32::MAX);
    let n = client
        .execute(
            &format!(
                "UPDATE {}.settings SET max_payload_bytes = $1 WHERE max_payload_bytes <> $1",
                quote_ident(schema)
            ),
            &[&cap],
        )
        .map_err(DbError::query("storing the schema settings"))?;
    Ok(n > 0)
}

/// The payload size cap stored in the schema.
pub fn max_payload_bytes(client: &mut impl postgres::GenericClient) -> Result<i64, DbError> {
    let row = client
        .query_one("SELECT max_payload_bytes FROM settings", &[])
        .map_err(DbError::query("reading the payload size cap"))?;
    Ok(i64::from(row.get::<_, i32>(0)))
}

/// The schema's recorded version; 0 when the schema or its migrations table
/// does not exist.
pub fn current_version(client: &mut Client, schema: &str) -> Result<i32, DbError> {
    let row = client
        .query_one(
            "SELECT to_regclass(quote_ident($1) || '.schema_migrations') IS NOT NULL",
            &[&schema],
        )
        .map_err(DbError::query("reading the schema version"))?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(max(version), 0) FROM {}.schema_migrations",
                quote_ident(schema)
            ),
            &[],
        )
        .map_err(DbError::query("reading the schema version"))?;
    Ok(row.get(0))
}

/// Fails unless the schema is exactly at this binary's version, naming the
/// command to run.
pub fn ensure_current(client: &mut Client, schema: &str) -> Result<(), DbError> {
    let found = current_version(client, schema)?;
    let expected = latest_version();
    match found.cmp(&expected) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(DbError::NotMigrated {
            schema: schema.to_string(),
            found,
            expected,
            target: target(client),
        }),
        std::cmp::Ordering::Greater => Err(DbError::TooNew {
            schema: schema.to_string(),
            found,
            expected,
        }),
    }
}

/// Where `client` is connected, for a message: `database "app" on
/// 127.0.0.1:5432 as user "app"` (a Unix socket shows as `the local
/// socket`); empty if the server does not say.
fn target(client: &mut Client) -> String {
    let row = client.query_one(
        "SELECT current_database(), current_user, \
                coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'the local socket')",
        &[],
    );
    match row {
        Ok(row) => format!(
            "database \"{}\" on {} as user \"{}\"",
            row.get::<_, String>(0),
            row.get::<_, String>(2),
            row.get::<_, String>(1)
        ),
        Err(_) => String::new(),
    }
}

/// Quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_from_one_without_gaps() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("notification"), "\"notification\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
