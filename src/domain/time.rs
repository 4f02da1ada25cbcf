//! Time as chatd stores it: Unix epoch milliseconds (UTC), shown in JSON as
//! RFC 3339 strings.

/// Current time as Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Serializes Unix epoch ms as an RFC 3339 UTC string with milliseconds
/// (`2026-12-02T04:27:32.123Z`); a value out of jiff's range is written as
/// the number. For `#[serde(serialize_with = ...)]` on API types.
pub fn rfc3339<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    match jiff::Timestamp::from_millisecond(*ms) {
        Ok(t) => s.serialize_str(&format!("{t:.3}")),
        Err(_) => s.serialize_i64(*ms),
    }
}

/// Today's UTC day as `YYYY-MM-DD` (the token-usage ledger's key).
pub fn today() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%d").to_string()
}
