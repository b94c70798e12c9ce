//! Database access: connections, the worker pool, migrations and the queries
//! each part of the service needs, one file per table or concern.
//!
//! Every connection is opened the same way ([`pg_config`] and the TLS
//! connector of [`tls`]): connect timeout from the config, TCP keepalives
//! and `tcp_user_timeout` on both ends so that a dead peer is noticed
//! (`tcp`), a statement timeout, `search_path` set to the service's schema
//! so that queries name tables unqualified, and the `sslmode` of
//! `database.url`. Decisions about what to write live in
//! `state`; this module only moves rows.

pub mod audit;
pub mod channels;
pub mod controls;
pub mod due;
pub mod event_types;
pub mod events;
pub mod idempotency;
pub mod leaders;
pub mod lock_keys;
pub mod migrate;
pub mod prune;
pub mod rules;
pub mod secrets;
pub mod shards;
pub mod statuses;
pub mod tcp;
pub mod tls;
pub mod tokens;

use std::time::Duration;

use postgres::config::Host;
use postgres::Client;
use r2d2_postgres::PostgresConnectionManager;

use crate::config::db_url::SslMode;
use crate::config::{redact_url, DatabaseConfig};

/// The workers' connection pool.
pub type Pool = r2d2::Pool<WorkerManager>;
/// One connection taken from the [`Pool`].
pub type PooledClient = r2d2::PooledConnection<WorkerManager>;

/// A pooled worker connection: a client plus a "discard me" mark, set after
/// a panic or a lost connection so that the pool drops it instead of handing
/// it to the next worker.
pub struct WorkerConn {
    /// The connection.
    pub client: Client,
    /// The status write, prepared on this connection at first use.
    pub writer: Option<statuses::StatusWriter>,
    /// The API's event post (`events::EMIT`), prepared on this connection
    /// at first use: planned once, one round trip a post.
    pub emit: Option<postgres::Statement>,
    /// Set to make the pool discard this connection when it is returned.
    pub discard: bool,
}

/// `r2d2_postgres`'s manager, plus the discard mark of [`WorkerConn`].
pub struct WorkerManager(PostgresConnectionManager<tls::Connector>);

impl r2d2::ManageConnection for WorkerManager {
    type Connection = WorkerConn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<WorkerConn, postgres::Error> {
        Ok(WorkerConn {
            client: self.0.connect()?,
            writer: None,
            emit: None,
            discard: false,
        })
    }

    fn is_valid(&self, conn: &mut WorkerConn) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut WorkerConn) -> bool {
        conn.discard || self.0.has_broken(&mut conn.client)
    }
}

impl WorkerConn {
    /// The event post statement ([`events::EMIT`]) prepared on this
    /// connection (at the first call) and the connection.
    pub fn emit_statement(&mut self) -> Result<(postgres::Statement, &mut Client), DbError> {
        let statement = match &self.emit {
            Some(s) => s.clone(),
            None => {
                let s = self
                    .client
                    .prepare(events::EMIT)
                    .map_err(DbError::query("preparing the event post"))?;
                self.emit.insert(s).clone()
            }
        };
        Ok((statement, &mut self.client))
    }
}

/// Longest a single statement may run on a service connection.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A database failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A stored signing secret or header value cannot be opened (a key
    /// this instance does not have, or a damaged value).
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretsError),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to the database at {url}: {}", driver_text(source))]
    Connect {
        /// The URL with the password redacted.
        url: String,
        /// The driver's error.
        source: postgres::Error,
    },
    /// A TLS handshake was refused: the server's certificate failed a check
    /// (the message names the host and why). A configuration problem.
    #[error("cannot connect to the database: {source}")]
    TlsRefused {
        /// The driver's error, holding [`tls::Refused`].
        source: postgres::Error,
    },
    /// `sslmode` requires TLS and the server does not offer it.
    #[error("cannot connect to the database at {hosts}: the server does not offer TLS, and sslmode={mode} in database.url requires it; turn `ssl` on in the server, or use the address of a server that has it ({source})")]
    TlsNotOffered {
        /// The URL's hosts.
        hosts: String,
        /// The sslmode written.
        mode: SslMode,
        /// The driver's error.
        source: postgres::Error,
    },
    /// The TLS settings of `database.url` cannot be used.
    #[error("database.url: {0}")]
    TlsSetup(#[from] tls::SetupError),
    /// No pooled connection became available in time.
    #[error("cannot get a database connection from the pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A statement failed.
    #[error("database error while {what}: {}", driver_text(source))]
    Query {
        /// What the statement was for, e.g. "creating a channel".
        what: &'static str,
        /// The driver's error.
        source: postgres::Error,
    },
    /// The schema is older than this binary (or absent).
    #[error("the database schema \"{schema}\" is at version {found} in {target}, this binary needs {expected}: if this is the database to use, run `notification-reconciler migrate` first; if not, fix database.url (or DATABASE_URL, which overrides it)")]
    NotMigrated {
        /// Schema name.
        schema: String,
        /// Version found (0 = none).
        found: i32,
        /// Version this binary was built for.
        expected: i32,
        /// Which database, server and user (`database "app" on
        /// 127.0.0.1:5432 as user "app"`): the advice would create the
        /// schema there.
        target: String,
    },
    /// The schema was migrated by a newer binary.
    #[error("the database schema \"{schema}\" is at version {found}, newer than this binary knows ({expected}): upgrade notification-reconciler")]
    TooNew {
        /// Schema name.
        schema: String,
        /// Version found.
        found: i32,
        /// Newest version this binary knows.
        expected: i32,
    },
    /// `reconciler.shards` is not the shard count recorded in the schema.
    #[error("reconciler.shards = {configured}, but the database records {recorded} shards: every instance must use the same value; to change it, stop every instance, set reconciler.shards and run `notification-reconciler migrate` (see docs/operations.md)")]
    ShardsMismatch {
        /// The configured count.
        configured: u32,
        /// The recorded count.
        recorded: u32,
    },
    /// `migrate` was asked to change the shard count while instances run.
    #[error("reconciler.shards = {configured}, but the database records {recorded} shards and {} instance(s) are running ({}): stop every instance before changing the shard count", live.len(), live.join(", "))]
    ShardsInUse {
        /// The recorded count.
        recorded: u32,
        /// The configured count.
        configured: u32,
        /// The live instances' names.
        live: Vec<String>,
    },
    /// The connection a step needs is not open (it broke earlier).
    #[error("the {0} connection is not open")]
    NotConnected(&'static str),
    /// A stored row cannot be used (e.g. an unknown state).
    #[error("bad row in {table}: {problem}")]
    BadRow {
        /// Table name.
        table: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl DbError {
    /// Wraps a driver error with what was being done.
    pub fn query(what: &'static str) -> impl FnOnce(postgres::Error) -> DbError {
        move |source| DbError::Query { what, source }
    }

    /// PostgreSQL's message when a statement failed on a value it cannot
    /// take (SQLSTATE class 22, data exception: a NUL character, a date out
    /// of its range, text that is no valid jsonpath …): the caller's input,
    /// not a failure of the service.
    pub fn data_exception(&self) -> Option<String> {
        match self {
            DbError::Query { source, .. } => source
                .as_db_error()
                .filter(|db| db.code().code().starts_with("22"))
                .map(|db| db.message().to_string()),
            _ => None,
        }
    }

    /// Whether the statement lost a deadlock or a serialization conflict
    /// (SQLSTATE 40P01, 40001): nothing was written, and running it again
    /// is the remedy.
    pub fn is_conflict(&self) -> bool {
        match self {
            DbError::Query { source, .. } => source
                .code()
                .is_some_and(|c| matches!(c.code(), "40P01" | "40001")),
            _ => false,
        }
    }

    /// Whether the error is the configuration's (`database.url`'s TLS
    /// settings, or a server they do not fit): exit 2, not a passing outage.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            DbError::TlsRefused { .. } | DbError::TlsNotOffered { .. } | DbError::TlsSetup(_)
        )
    }

    /// Whether the error means the connection is gone (it must be discarded).
    pub fn is_connection_lost(&self) -> bool {
        match self {
            DbError::Connect { .. }
            | DbError::TlsRefused { .. }
            | DbError::TlsNotOffered { .. }
            | DbError::TlsSetup(_)
            | DbError::Pool(_)
            | DbError::NotConnected(_) => true,
            DbError::Query { source, .. } => {
                // No SQLSTATE: an I/O error. Class 08 (connection exception)
                // and 57P0x (the server terminated the session or is going
                // down) end the session too.
                source.is_closed()
                    || source.code().is_none_or(|code| {
                        let code = code.code();
                        code.starts_with("08") || code.starts_with("57P")
                    })
            }
            _ => false,
        }
    }
}

/// A driver error with its causes, in one line: `db error: FATAL: password
/// authentication failed for user "app"`, where the driver's own `Display`
/// says only `db error` (a log line must say why, not only the command
/// line, which prints the whole chain).
pub fn driver_text(err: &postgres::Error) -> String {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The driver configuration every service connection uses.
pub fn pg_config(
    cfg: &DatabaseConfig,
    application_name: &str,
) -> Result<postgres::Config, DbError> {
    let mut pg: postgres::Config = cfg.driver_url.parse().map_err(|source| DbError::Connect {
        url: redact_url(&cfg.url),
        source,
    })?;
    tcp::apply(&mut pg, &cfg.tcp);
    pg.connect_timeout(cfg.connect_timeout)
        .application_name(application_name)
        .options(&format!(
            "-c search_path={} -c statement_timeout={} -c client_min_messages=warning {}",
            cfg.schema,
            STATEMENT_TIMEOUT.as_millis(),
            tcp::server_options(&cfg.tcp)
        ));
    // libpq never asks for TLS over a Unix socket (the server would refuse
    // it); the verifying modes are `require` to the driver, the checks are
    // the connector's.
    let only_sockets = pg.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)));
    pg.ssl_mode(match cfg.tls.mode {
        _ if only_sockets => postgres::config::SslMode::Disable,
        SslMode::Disable => postgres::config::SslMode::Disable,
        SslMode::Prefer => postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            postgres::config::SslMode::Require
        }
    });
    Ok(pg)
}

/// Opens one connection (the lock connection, or a command's connection).
pub fn connect(cfg: &DatabaseConfig, application_name: &str) -> Result<Client, DbError> {
    let pg = pg_config(cfg, application_name)?;
    pg.connect(tls::connector(&cfg.tls)?)
        .map_err(|source| connect_error(cfg, &pg, source))
}

/// A failed connect as [`DbError`]: a TLS refusal or a server without TLS
/// when it is required are told apart from an unreachable server.
pub fn connect_error(
    cfg: &DatabaseConfig,
    pg: &postgres::Config,
    source: postgres::Error,
) -> DbError {
    let mut cause = std::error::Error::source(&source);
    while let Some(c) = cause {
        if c.is::<tls::Refused>() {
            return DbError::TlsRefused { source };
        }
        if c.to_string() == "server does not support TLS" {
            let hosts = pg
                .get_hosts()
                .iter()
                .map(|h| match h {
                    Host::Tcp(name) => name.clone(),
                    Host::Unix(path) => path.display().to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            return DbError::TlsNotOffered {
                hosts,
                mode: cfg.tls.mode,
                source,
            };
        }
        cause = c.source();
    }
    DbError::Connect {
        url: redact_url(&cfg.url),
        source,
    }
}

/// Builds the workers' pool without connecting yet (so that the daemon can
/// start while the database is down). Connections are opened when first
/// needed, at most `size`; while the database is down the pool retries
/// connecting in the background (at most every half connect timeout).
/// Workers check out with their own deadline (`Pool::get_timeout`, see
/// `reconcile::recorder::RECORD_WAIT`); a plain `get` waits at most the
/// connect timeout.
pub fn pool(cfg: &DatabaseConfig, size: u32, application_name: &str) -> Result<Pool, DbError> {
    let manager = WorkerManager(PostgresConnectionManager::new(
        pg_config(cfg, application_name)?,
        tls::connector(&cfg.tls)?,
    ));
    Ok(r2d2::Pool::builder()
        .max_size(size.max(1))
        .min_idle(Some(0))
        .connection_timeout(cfg.connect_timeout)
        .test_on_check_out(false)
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .build_unchecked(manager))
}

/// Connects and checks that the schema is at this binary's version: what
/// every command but `migrate` does first.
pub fn connect_checked(cfg: &DatabaseConfig, application_name: &str) -> Result<Client, DbError> {
    let mut client = connect(cfg, application_name)?;
    migrate::ensure_current(&mut client, &cfg.schema)?;
    Ok(client)
}
