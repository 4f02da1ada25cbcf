//! `get_current_time`: the current date and time in an IANA timezone.

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Tool, ToolContext, ToolError, ToolOutput};

/// Returns `{"timezone", "datetime" (RFC 3339 with offset), "weekday",
/// "unix_seconds"}` as JSON text. The timezone database is bundled.
pub struct CurrentTime;

impl Tool for CurrentTime {
    fn name(&self) -> &str {
        "get_current_time"
    }

    fn description(&self) -> &str {
        "Get the current date, time and weekday in a timezone (IANA name such as \
         \"Europe/Paris\"; default UTC)."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA timezone name, e.g. \"America/New_York\". Default \"UTC\"."
                }
            },
            "additionalProperties": false
        })
    }

    fn call(&self, _ctx: ToolContext, arguments: Value) -> BoxFuture<'static, Result<ToolOutput, ToolError>> {
        let tz = arguments
            .get("timezone")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("UTC")
            .to_string();
        async move { now_in(&tz, jiff::Timestamp::now()).map(ToolOutput::from) }.boxed()
    }
}

/// Formats `at` in the timezone named `tz`.
fn now_in(tz: &str, at: jiff::Timestamp) -> Result<String, ToolError> {
    let zone = jiff::tz::TimeZone::get(tz).map_err(|_| {
        ToolError::InvalidArguments(format!(
            "unknown timezone {tz:?}; use an IANA name such as \"UTC\", \"Europe/Paris\" or \"Asia/Tokyo\""
        ))
    })?;
    let zoned = at.to_zoned(zone);
    Ok(json!({
        "timezone": tz,
        "datetime": zoned.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "weekday": zoned.strftime("%A").to_string(),
        "unix_seconds": at.as_second(),
    })
    .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_in_the_named_zone() {
        let at: jiff::Timestamp = "2026-11-21T05:00:00Z".parse().expect("timestamp");
        let out: Value = serde_json::from_str(&now_in("Asia/Tokyo", at).expect("known zone")).expect("json");
        assert_eq!(out["datetime"], "2026-11-21T14:00:00+09:00");
        assert_eq!(out["weekday"], "Saturday");
        assert!(matches!(
            now_in("Mars/Olympus", at),
            Err(ToolError::InvalidArguments(_))
        ));
    }
}
