//! Keyset pagination shared by every list: a page size and an opaque
//! cursor that names the last row of the previous page by its sort key
//! (`created_at`, `id`), so rows that change or appear meanwhile never make
//! a page skip or repeat another row. The cursor is base64url text of
//! `<microseconds since the epoch>.<uuid>`; anything else is refused.

use base64::Engine;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::OpsError;

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page size.
pub const MAX_LIMIT: i64 = 500;

/// Where a page starts: after `(created_at, id)` in the list's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The last row's time.
    pub created_at: DateTime<Utc>,
    /// The last row's id.
    pub id: Uuid,
}

/// A page request.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Rows per page (1 to [`MAX_LIMIT`]).
    pub limit: i64,
    /// After this row; `None` = from the start.
    pub after: Option<Cursor>,
}

impl Default for Page {
    fn default() -> Page {
        Page {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

impl Page {
    /// A page from the API's `limit` and `cursor` query parameters.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>) -> Result<Page, OpsError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => match text.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(OpsError::invalid(
                        "limit",
                        format!("{text:?} is not a number from 1 to {MAX_LIMIT}"),
                    ))
                }
            },
        };
        let after = cursor.map(Cursor::decode).transpose()?;
        Ok(Page { limit, after })
    }
}

impl Cursor {
    /// The cursor as the opaque text the API hands out.
    pub fn encode(&self) -> String {
        let text = format!("{}.{}", self.created_at.timestamp_micros(), self.id);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
    }

    /// Parses a cursor handed out by [`Cursor::encode`].
    pub fn decode(text: &str) -> Result<Cursor, OpsError> {
        let bad = || OpsError::invalid("cursor", "not a cursor this API handed out");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let (micros, id) = text.split_once('.').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let created_at = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
        Ok(Cursor {
            created_at: super::check_time("cursor", created_at).map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// One page of a list and the cursor of the next (`None`: this was the last).
#[derive(Debug, serde::Serialize)]
pub struct Paged<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Pass it as `cursor` for the next page.
    pub next_cursor: Option<String>,
}

impl<T> Paged<T> {
    /// [`Paged::from_rows`] when a page was asked for; else all of `rows`
    /// (the command line's lists), with no next page.
    pub fn maybe_paged(rows: Vec<T>, page: Option<Page>, key: impl Fn(&T) -> Cursor) -> Paged<T> {
        match page {
            Some(page) => Paged::from_rows(rows, page, key),
            None => Paged {
                items: rows,
                next_cursor: None,
            },
        }
    }

    /// A page from up to `limit + 1` rows fetched: the extra row only says
    /// that there is a next page; `key` gives a row's sort key.
    pub fn from_rows(mut rows: Vec<T>, page: Page, key: impl Fn(&T) -> Cursor) -> Paged<T> {
        let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = more.then(|| rows.last().map(|r| key(r).encode())).flatten();
        Paged {
            items: rows,
            next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_garbage_is_refused() {
        let c = Cursor {
            created_at: DateTime::<Utc>::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        for bad in [
            "",
            "!!!",
            "bm90IGEgY3Vyc29y",
            "MTIzLm5vdC1hLXV1aWQ",
            "../../etc",
        ] {
            let e = Cursor::decode(bad).unwrap_err().to_string();
            assert!(e.starts_with("cursor: "), "{bad}: {e}");
        }
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(Page::parse(None, None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(Page::parse(Some("7"), None).unwrap().limit, 7);
        for bad in ["0", "-1", "501", "x", ""] {
            assert!(Page::parse(Some(bad), None).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_extra_row_makes_a_next_cursor() {
        let at = |i: i64| Cursor {
            created_at: DateTime::<Utc>::from_timestamp(i, 0).unwrap(),
            id: Uuid::nil(),
        };
        let page = Page {
            limit: 2,
            after: None,
        };
        let p = Paged::from_rows(vec![1, 2, 3], page, |i| at(*i));
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(
            Cursor::decode(p.next_cursor.as_deref().unwrap()).unwrap(),
            at(2)
        );
        let p = Paged::from_rows(vec![1, 2], page, |i| at(*i));
        assert!(p.next_cursor.is_none());
    }
}
