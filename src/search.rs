//! Finding stored images: what a search asks for, and where a page of results ends.
//!
//! The JSON API and the gallery read the same query parameters into an [`ImageQuery`]; the index
//! answers it with a keyset query (newest first, by `(created_at, image_id)`), so a deep page costs
//! what the first one does and paging never repeats or skips an image, even while new ones arrive.
//! A page ends at a [`Cursor`]: the position of its last image, handed back opaque to the caller.

use crate::domain::ImageFormat;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use std::fmt;
use thiserror::Error;
use uuid::Uuid;

/// Images per page when the caller does not say: one gallery screen.
pub const DEFAULT_PAGE: u32 = 48;
/// The most a caller may ask for in one page.
pub const MAX_PAGE: u32 = 200;
/// Longer customer or source ids are not ids but mistakes (or attacks on the log).
const MAX_ID_LEN: usize = 200;

/// The query parameters a search understands, in the order the API documents them.
pub const PARAMETERS: [&str; 7] = [
    "customer", "source", "format", "from", "to", "limit", "cursor",
];

/// A search of the index. Every filter is optional; images come newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageQuery {
    pub customer_id: Option<String>,
    pub source_id: Option<String>,
    pub format: Option<ImageFormat>,
    /// Created at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Continue after this position (the previous page's last image).
    pub after: Option<Cursor>,
    pub limit: u32,
}

impl Default for ImageQuery {
    fn default() -> Self {
        ImageQuery {
            customer_id: None,
            source_id: None,
            format: None,
            created_from: None,
            created_before: None,
            after: None,
            limit: DEFAULT_PAGE,
        }
    }
}

/// Why a search was refused; each message names the parameter and what it accepts.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SearchError {
    #[error(
        "unknown parameter {0:?}; a search takes customer, source, format, from, to, limit and cursor"
    )]
    UnknownParameter(String),
    #[error("parameter {0:?} is given twice; give each filter once")]
    Repeated(String),
    #[error("{name} must be at most {MAX_ID_LEN} characters")]
    TooLong { name: String },
    #[error("format {0:?} is not one of png, jpeg, webp (or image/png, image/jpeg, image/webp)")]
    Format(String),
    #[error(
        "{name}={value:?} is not a time; use RFC 3339 (2026-11-26T08:00:00Z), a date (2026-11-26) or a local time in UTC (2026-11-26T08:00)"
    )]
    Time { name: String, value: String },
    #[error("from ({from}) must be before to ({to})")]
    EmptyRange { from: String, to: String },
    #[error("limit={0:?} is not a number from 1 to {MAX_PAGE}")]
    Limit(String),
    #[error(
        "cursor {0:?} is not one this server handed out; start again from the first page (leave cursor out)"
    )]
    Cursor(String),
}

impl ImageQuery {
    /// Reads URL query parameters. Empty values count as absent, as an HTML form sends them.
    pub fn from_params<'a>(
        params: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ImageQuery, SearchError> {
        let mut query = ImageQuery::default();
        let mut seen: Vec<&str> = Vec::new();
        for (name, value) in params {
            let value = value.trim();
            let Some(&known) = PARAMETERS.iter().find(|p| **p == name) else {
                return Err(SearchError::UnknownParameter(name.to_string()));
            };
            if value.is_empty() {
                continue;
            }
            if seen.contains(&known) {
                return Err(SearchError::Repeated(name.to_string()));
            }
            seen.push(known);
            match known {
                "customer" => query.customer_id = Some(id_value(name, value)?),
                "source" => query.source_id = Some(id_value(name, value)?),
                "format" => {
                    query.format = Some(
                        ImageFormat::from_name(value)
                            .or_else(|| ImageFormat::from_content_type(value))
                            .ok_or_else(|| SearchError::Format(value.to_string()))?,
                    )
                }
                "from" => query.created_from = Some(parse_time(name, value)?),
                "to" => query.created_before = Some(parse_time(name, value)?),
                "limit" => {
                    query.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| SearchError::Limit(value.to_string()))?
                }
                "cursor" => query.after = Some(Cursor::decode(value)?),
                _ => unreachable!("every name in PARAMETERS is handled"),
            }
        }
        if let (Some(from), Some(to)) = (query.created_from, query.created_before)
            && from >= to
        {
            return Err(SearchError::EmptyRange {
                from: from.to_rfc3339(),
                to: to.to_rfc3339(),
            });
        }
        Ok(query)
    }

    /// The query parameters of this search without its cursor: the filters a next-page link
    /// keeps, or a form shows.
    pub fn filter_params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(c) = &self.customer_id {
            params.push(("customer", c.clone()));
        }
        if let Some(s) = &self.source_id {
            params.push(("source", s.clone()));
        }
        if let Some(f) = self.format {
            params.push(("format", f.name().to_string()));
        }
        if let Some(t) = self.created_from {
            params.push(("from", t.to_rfc3339()));
        }
        if let Some(t) = self.created_before {
            params.push(("to", t.to_rfc3339()));
        }
        if self.limit != DEFAULT_PAGE {
            params.push(("limit", self.limit.to_string()));
        }
        params
    }
}

fn id_value(name: &str, value: &str) -> Result<String, SearchError> {
    if value.chars().count() > MAX_ID_LEN {
        return Err(SearchError::TooLong {
            name: name.to_string(),
        });
    }
    Ok(value.to_string())
}

/// RFC 3339, a bare date (midnight UTC), or what an HTML `datetime-local` input sends (read as UTC).
fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, SearchError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(value, format) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    Err(SearchError::Time {
        name: name.to_string(),
        value: value.to_string(),
    })
}

/// Where a page ended: the sort key of its last image. Microsecond precision, as PostgreSQL keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub image_id: Uuid,
}

impl Cursor {
    /// `<microseconds since the epoch>_<image id, 32 hex digits>`: URL-safe, stable, opaque enough.
    pub fn encode(&self) -> String {
        format!(
            "{}_{}",
            self.created_at.timestamp_micros(),
            self.image_id.simple()
        )
    }

    pub fn decode(text: &str) -> Result<Cursor, SearchError> {
        let bad = || SearchError::Cursor(text.chars().take(80).collect());
        let (micros, id) = text.split_once('_').ok_or_else(bad)?;
        let created_at = micros
            .parse::<i64>()
            .ok()
            .and_then(DateTime::from_timestamp_micros)
            .ok_or_else(bad)?;
        let image_id = Uuid::try_parse(id).map_err(|_| bad())?;
        Ok(Cursor {
            created_at,
            image_id,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(params: &[(&str, &str)]) -> Result<ImageQuery, SearchError> {
        ImageQuery::from_params(params.iter().copied())
    }

    #[test]
    fn no_parameters_mean_everything_newest_first_one_screen_at_a_time() {
        assert_eq!(query(&[]).unwrap(), ImageQuery::default());
        assert_eq!(ImageQuery::default().limit, DEFAULT_PAGE);
    }

    #[test]
    fn every_filter_is_read() {
        let q = query(&[
            ("customer", "acme"),
            ("source", "cam-7"),
            ("format", "image/webp"),
            ("from", "2026-11-01"),
            ("to", "2026-11-26T08:30:00+01:00"),
            ("limit", "10"),
        ])
        .unwrap();
        assert_eq!(q.customer_id.as_deref(), Some("acme"));
        assert_eq!(q.source_id.as_deref(), Some("cam-7"));
        assert_eq!(q.format, Some(ImageFormat::Webp));
        assert_eq!(
            q.created_from.unwrap().to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert_eq!(
            q.created_before.unwrap().to_rfc3339(),
            "2026-11-26T07:30:00+00:00"
        );
        assert_eq!(q.limit, 10);
    }

    #[test]
    fn empty_form_fields_are_no_filter() {
        let q = query(&[("customer", ""), ("format", " "), ("from", "")]).unwrap();
        assert_eq!(q, ImageQuery::default());
    }

    #[test]
    fn a_browser_local_time_is_read_as_utc() {
        let q = query(&[("from", "2026-11-26T08:15")]).unwrap();
        assert_eq!(
            q.created_from.unwrap().to_rfc3339(),
            "2026-11-26T08:15:00+00:00"
        );
    }

    #[test]
    fn bad_parameters_are_refused_with_what_is_accepted() {
        let cases: [(&[(&str, &str)], &str); 7] = [
            (&[("colour", "red")], "unknown parameter \"colour\""),
            (&[("format", "gif")], "not one of png, jpeg, webp"),
            (&[("from", "yesterday")], "from=\"yesterday\" is not a time"),
            (&[("limit", "0")], "from 1 to 200"),
            (&[("limit", "201")], "from 1 to 200"),
            (&[("cursor", "abc")], "start again from the first page"),
            (&[("customer", "a"), ("customer", "b")], "given twice"),
        ];
        for (params, expected) in cases {
            let message = query(params).unwrap_err().to_string();
            assert!(message.contains(expected), "{params:?}: {message}");
        }
    }

    #[test]
    fn a_range_must_not_be_empty() {
        let err = query(&[("from", "2026-11-26"), ("to", "2026-11-25")]).unwrap_err();
        assert!(matches!(err, SearchError::EmptyRange { .. }), "{err}");
    }

    #[test]
    fn cursors_round_trip_at_microsecond_precision() {
        let cursor = Cursor {
            created_at: DateTime::from_timestamp_micros(1_764_140_000_123_456).unwrap(),
            image_id: Uuid::new_v4(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        let before_1970 = Cursor {
            created_at: DateTime::from_timestamp_micros(-5).unwrap(),
            ..cursor
        };
        assert_eq!(Cursor::decode(&before_1970.encode()).unwrap(), before_1970);
    }

    #[test]
    fn filter_params_keep_the_filters_and_drop_the_cursor() {
        let q = query(&[
            ("customer", "acme"),
            ("format", "png"),
            ("limit", "7"),
            (
                "cursor",
                &Cursor {
                    created_at: Utc::now(),
                    image_id: Uuid::nil(),
                }
                .encode(),
            ),
        ])
        .unwrap();
        let kept = q.filter_params();
        assert_eq!(
            kept,
            vec![
                ("customer", "acme".to_string()),
                ("format", "png".to_string()),
                ("limit", "7".to_string())
            ]
        );
        let again = ImageQuery::from_params(kept.iter().map(|(k, v)| (*k, v.as_str()))).unwrap();
        assert_eq!(again, ImageQuery { after: None, ..q });
    }
}
