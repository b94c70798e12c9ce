//! notification-reconciler: delivers notification events stored in PostgreSQL
//! to webhook channels, in parallel, and keeps an exact per-channel delivery
//! record.
//!
//! The crate is a library with a thin binary (`src/main.rs`) on top, so that
//! integration tests and the benchmark drive the very code the daemon runs.
//! The modules follow the architecture: `config` (TOML → validated settings, and which settings together make
//! delivery impossible or look wrong), `exit` (exit codes, the usage error),
//! `db` (connections, pool, migrations, queries), `lock` (the leader's advisory
//! lock), `fence` (a standby ending a silent leader's session), `state` (the pure delivery state machine), `delivery` (signing, HTTP,
//! one delivery's worker step), `reconcile` (the leader loop and its
//! workers), `service` (the daemon, signals, systemd, metrics), `sink` (the development receiver),
//! `console` (the embedded web console's files), `ops` (the operations the
//! command line and the API both call), `api` (the management API) and
//! `cli` (commands).

pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub mod db;
pub mod delivery;
pub mod exit;
pub mod fence;
pub mod http_server;
pub mod lock;
pub mod ops;
pub mod rate_limit;
pub mod reconcile;
pub mod secrets;
pub mod service;
pub mod shard;
pub mod sink;
pub mod state;
