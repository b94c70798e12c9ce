//! Encrypted values in the database: the `secret_key_bridge` table (a key
//! rotation's keys, each wrapped under the other), learning the keys it
//! bridges to, re-encrypting channels' signing secrets and header values
//! under the current key in small steps (what `migrate` and
//! `secrets rotate-key` do, while deliveries continue), and the check that
//! this instance can read every stored value. Sealing and opening one value
//! is `crate::secrets`' business.

use postgres::GenericClient;
use uuid::Uuid;

use super::DbError;
use crate::secrets::{self, Key, HEADER_VALUE, PREFIX, SIGNING_SECRET, WRAPPED_KEY};

/// The key ids named by sealed values in `text` (a value, or headers as
/// JSON text).
pub fn key_ids_in(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices(PREFIX).filter_map(move |(at, _)| {
        let rest = &text[at + PREFIX.len()..];
        rest.split_once(':').map(|(id, _)| id)
    })
}

/// Makes sure every key `texts` name is known, learning the bridges from
/// the database when one is not (a rotation under way or just done).
pub fn ensure_known<'a>(
    client: &mut impl GenericClient,
    texts: impl IntoIterator<Item = &'a str>,
) -> Result<(), DbError> {
    let unknown = texts
        .into_iter()
        .flat_map(key_ids_in)
        .any(|id| !secrets::knows(id));
    if unknown {
        learn_bridges(client)?;
    }
    Ok(())
}

/// Learns every key the bridges lead to from a known key; returns how
/// many were new.
pub fn learn_bridges(client: &mut impl GenericClient) -> Result<usize, DbError> {
    let rows = client
        .query(
            "SELECT key_id, wrapped_by, wrapped FROM secret_key_bridge",
            &[],
        )
        .map_err(DbError::query("reading the key bridges"))?;
    let mut learned = 0;
    loop {
        let mut progress = false;
        for r in &rows {
            let (id, by, wrapped): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            if secrets::knows(&id) || !secrets::knows(&by) {
                continue;
            }
            let key = secrets::open(&wrapped, WRAPPED_KEY)
                .ok()
                .and_then(|text| Key::from_base64(&text))
                .filter(|k| k.id() == id);
            match key {
                Some(k) => {
                    secrets::learn(k);
                    learned += 1;
                    progress = true;
                }
                None => log::warn!("secrets: the bridge to key {id} from key {by} does not open"),
            }
        }
        if !progress {
            return Ok(learned);
        }
    }
}

/// Stores the bridges between `old` and `new` (each wrapped under the
/// other).
pub fn add_bridges(client: &mut impl GenericClient, old: &Key, new: &Key) -> Result<(), DbError> {
    for (key, under) in [(new, old), (old, new)] {
        let wrapped = under.seal(&key.to_base64(), WRAPPED_KEY);
        client
            .execute(
                "INSERT INTO secret_key_bridge (key_id, wrapped_by, wrapped) VALUES ($1, $2, $3)
                 ON CONFLICT (key_id, wrapped_by) DO UPDATE SET wrapped = excluded.wrapped",
                &[&key.id(), &under.id(), &wrapped],
            )
            .map_err(DbError::query("storing a key bridge"))?;
    }
    Ok(())
}

/// Removes every bridge (a finished rotation); returns how many.
pub fn drop_bridges(client: &mut impl GenericClient) -> Result<u64, DbError> {
    client
        .execute("DELETE FROM secret_key_bridge", &[])
        .map_err(DbError::query("removing the key bridges"))
}

/// The `WHERE` of channels holding a value not sealed under the key whose
/// values match `$1` (a `LIKE` pattern). Only string header values count:
/// a value of another type (a row written by hand; the worker refuses it)
/// is left as it is, and must not make the re-encryption loop.
const NOT_UNDER: &str = "(signing_secret NOT LIKE $1
     OR (previous_secret IS NOT NULL AND previous_secret NOT LIKE $1)
     OR (jsonb_typeof(headers) = 'object'
         AND EXISTS (SELECT 1 FROM jsonb_each(headers) h
                     WHERE jsonb_typeof(h.value) = 'string' AND (h.value #>> '{}') NOT LIKE $1)))";

fn pattern(key: &Key) -> String {
    format!("{PREFIX}{}:%", key.id())
}

/// How many channels (deleted ones too) hold a value not sealed under
/// `key`.
pub fn count_not_under(client: &mut impl GenericClient, key: &Key) -> Result<i64, DbError> {
    let row = client
        .query_one(
            &format!("SELECT count(*) FROM channel WHERE {NOT_UNDER}"),
            &[&pattern(key)],
        )
        .map_err(DbError::query("counting channels to encrypt"))?;
    Ok(row.get(0))
}

/// One step of re-encryption: in one short transaction, up to `batch`
/// channels holding a value not sealed under `key` (rows another
/// transaction holds are skipped, and taken by a later step) get every
/// value opened and sealed under `key`. Returns how many were changed.
pub fn reseal_step(client: &mut postgres::Client, key: &Key, batch: i64) -> Result<u64, DbError> {
    let what = "re-encrypting channels' secrets";
    let mut tx = client.transaction().map_err(DbError::query(what))?;
    let rows = tx
        .query(
            &format!(
                "SELECT id, signing_secret, previous_secret, headers FROM channel
                 WHERE {NOT_UNDER} ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
            ),
            &[&pattern(key), &batch],
        )
        .map_err(DbError::query(what))?;
    let texts: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            let headers: serde_json::Value = r.get(3);
            [
                r.get::<_, String>(1),
                r.get::<_, Option<String>>(2).unwrap_or_default(),
                headers.to_string(),
            ]
        })
        .collect();
    ensure_known(&mut tx, texts.iter().map(String::as_str))?;
    let reseal = |stored: &str, aad: &str| -> Result<String, DbError> {
        if secrets::sealed_under(stored) == Some(key.id()) {
            return Ok(stored.to_string());
        }
        Ok(key.seal(&secrets::open(stored, aad)?, aad))
    };
    let mut changed = 0;
    for r in &rows {
        let id: Uuid = r.get(0);
        let secret = reseal(r.get(1), SIGNING_SECRET)?;
        let previous = r
            .get::<_, Option<&str>>(2)
            .map(|p| reseal(p, SIGNING_SECRET))
            .transpose()?;
        let headers: serde_json::Value = r.get(3);
        let headers = secrets::map_values(&headers, |v| {
            reseal(v, HEADER_VALUE).map_err(|e| match e {
                DbError::Secret(s) => s,
                _ => secrets::SecretsError::Damaged(key.id().to_string()),
            })
        })?;
        changed += tx
            .execute(
                "UPDATE channel SET signing_secret = $2, previous_secret = $3, headers = $4
                 WHERE id = $1",
                &[&id, &secret, &previous, &headers],
            )
            .map_err(DbError::query(what))?;
    }
    tx.commit().map_err(DbError::query(what))?;
    Ok(changed)
}

/// Re-encrypts every channel's values under `key`, `batch` channels per
/// transaction, until none is left; returns how many were changed.
pub fn reseal_all(client: &mut postgres::Client, key: &Key, batch: i64) -> Result<u64, DbError> {
    let mut total = 0;
    loop {
        let n = reseal_step(client, key, batch)?;
        total += n;
        if n == 0 {
            if count_not_under(client, key)? == 0 {
                return Ok(total);
            }
            // Rows held by other transactions: wait for them briefly.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// The key ids stored values are sealed under.
pub fn stored_key_ids(client: &mut impl GenericClient) -> Result<Vec<String>, DbError> {
    let rows = client
        .query(
            "SELECT DISTINCT substring(v FROM '^nrenc:v1:([0-9a-f]+):') FROM (
                 SELECT signing_secret AS v FROM channel
                 UNION ALL SELECT previous_secret FROM channel WHERE previous_secret IS NOT NULL
                 UNION ALL SELECT h.value FROM channel,
                     jsonb_each_text(CASE WHEN jsonb_typeof(headers) = 'object'
                                          THEN headers ELSE '{}'::jsonb END) h
             ) s WHERE v LIKE 'nrenc:v1:%'",
            &[],
        )
        .map_err(DbError::query(
            "reading which keys secrets are stored under",
        ))?;
    Ok(rows.iter().filter_map(|r| r.get(0)).collect())
}

/// Refuses (with the key ids) when a stored value is sealed under a key
/// this instance neither has nor can learn from the bridges: deliveries to
/// those channels could not be signed.
pub fn check_readable(client: &mut impl GenericClient) -> Result<(), DbError> {
    let ids = stored_key_ids(client)?;
    if ids.iter().any(|id| !secrets::knows(id)) {
        learn_bridges(client)?;
    }
    match ids.into_iter().find(|id| !secrets::knows(id)) {
        None => Ok(()),
        Some(id) => Err(DbError::Secret(secrets::SecretsError::UnknownKey(id))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_found_in_values_and_header_json() {
        let text = r#"{"A": "nrenc:v1:00112233445566ff:AAAA", "B": "plain", "C": "nrenc:v1:aabbccddeeff0011:BBBB"}"#;
        let ids: Vec<&str> = key_ids_in(text).collect();
        assert_eq!(ids, vec!["00112233445566ff", "aabbccddeeff0011"]);
        assert_eq!(key_ids_in("whsec_abc").count(), 0);
    }
}
