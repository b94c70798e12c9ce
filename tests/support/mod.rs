//! Shared support for the integration tests and the benchmark: a throw-away
//! PostgreSQL (one cluster per test process, one database per test, or a
//! dedicated cluster a test may stop and restart), a scriptable HTTP
//! receiver that records what it got, the binary run to completion (`bin`)
//! or as a long-running child (`daemon`), and the rows tests seed
//! (`fixtures`), a private CA for HTTPS receivers (`tls`), and a sampler of
//! the daemon's database sessions (`sessions`), a TCP proxy that can go
//! silent (`proxy`) and which process sent a request (`peers`).
//!
//! Test files use it with `mod support;`; the benchmark with
//! `#[path = "../tests/support/mod.rs"] mod support;`. It holds no assertions
//! about the daemon itself: those live in the tests that use it.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

pub mod api;
pub mod bin;
pub mod cluster;
pub mod daemon;
pub mod fixtures;
pub mod net;
pub mod peers;
pub mod pg;
pub mod proxy;
pub mod receiver;
pub mod script;
pub mod sessions;
pub mod svix;
pub mod tls;

pub use cluster::Cluster;
pub use pg::{fresh_db, migrated_db, shared_cluster, TestDb};
pub use receiver::Receiver;
pub use script::{Reply, Request, Script};
