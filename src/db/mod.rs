//! Database access: connections, migrations and queries.
pub mod migrate;
