//! Embedded, versioned schema migrations (stub: filled in by the foundation work).

/// Applies every pending migration to `schema` on `client`; returns the
/// versions applied. Creates the schema when missing.
pub fn run(client: &mut postgres::Client, schema: &str) -> Result<Vec<i32>, postgres::Error> {
    let _ = (client, schema);
    Ok(Vec::new())
}
