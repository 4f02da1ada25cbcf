//! Checks that more than one section needs: an `http://`/`https://` URL and
//! configured HTTP headers. Each exists here once; the sections
//! ([`super::ProviderConfig`], [`super::McpServerConfig`], [`super::LlmConfig`])
//! call them from their own `validate`.

use std::collections::BTreeMap;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

/// Checks that `url` starts with `http://` or `https://`.
///
/// Errors: `"<field> must start with http:// or https://"`.
pub(super) fn http_url(field: &str, url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{field} must start with http:// or https://"))
    }
}

/// Parses configured extra headers (`headers = { "X-Title" = "chatd" }`) into
/// a [`HeaderMap`], in the order of `headers`; names that differ only in case
/// are both kept (appended).
///
/// `reserved` lists lower-case names that `owner` (e.g. `"chatd"`) sets
/// itself and that may not be configured.
///
/// Errors name the header, never its value: `headers: "<name>" is not a valid
/// HTTP header name`, `headers: "<name>" is set by <owner> and cannot be
/// configured`, `headers: the value of "<name>" is not a valid HTTP header
/// value`.
pub(super) fn header_map(
    headers: &BTreeMap<String, String>,
    reserved: &[&str],
    owner: &str,
) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: {name:?} is not a valid HTTP header name"))?;
        if reserved.contains(&parsed.as_str()) {
            return Err(format!("headers: {name:?} is set by {owner} and cannot be configured"));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("headers: the value of {name:?} is not a valid HTTP header value"))?;
        map.append(parsed, value);
    }
    Ok(map)
}
