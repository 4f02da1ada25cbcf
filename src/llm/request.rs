//! The requests chatd sends to one provider, built in one place for every
//! transport ([`super::transport`]): `POST {base}/chat/completions` with
//! its JSON body and headers, and the headers of `GET {base}/models`.

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, Entry, HeaderMap, HeaderName, HeaderValue};

use super::providers::ProviderError;
use super::{LlmError, WireRequest};
use crate::config::ProviderConfig;

/// Where one provider's requests go and what they carry besides the body:
/// its base URL, its API key and its extra headers. Cheap to clone;
/// `Debug` shows neither the key nor header values.
#[derive(Clone)]
pub(super) struct Upstream {
    /// The base URL without a trailing `/`.
    base_url: String,
    /// `{base_url}/chat/completions`.
    chat_url: String,
    /// Empty: no `Authorization` header.
    api_key: String,
    /// The provider's extra headers, sent with every request.
    headers: HeaderMap,
}

/// One `POST {base}/chat/completions`, the same bytes whichever transport
/// sends it.
#[derive(Debug)]
pub(super) struct ChatHttpRequest<'a> {
    /// `{base_url}/chat/completions`, as configured (not parsed yet).
    pub url: &'a str,
    /// In this order: `accept: text/event-stream`, `content-type:
    /// application/json`, the provider's headers (one of the same name
    /// replaces the header above in its place), and `authorization: Bearer
    /// <key>` (marked sensitive) when there is a key. The transport adds
    /// `host` and `content-length`.
    pub headers: HeaderMap,
    /// The JSON-encoded [`WireRequest`].
    pub body: Bytes,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.chat_url)
            .field("api_key", &self.redacted_key())
            .field("headers", &self.header_names())
            .finish()
    }
}

impl Upstream {
    /// The upstream of `provider`: its base URL (a trailing `/` dropped),
    /// key and extra headers.
    ///
    /// Errors: [`ProviderError::Invalid`] when the provider fails
    /// [`ProviderConfig::validate`] (a base URL that is not `http(s)://`, a
    /// header name or value that is not valid HTTP, ...). (A key
    /// that is not a valid header value fails each request instead, as
    /// [`Self::chat`] says.)
    pub fn new(provider: &ProviderConfig) -> Result<Self, ProviderError> {
        let invalid = |message: String| ProviderError::Invalid {
            provider: provider.name.clone(),
            message,
        };
        provider.validate().map_err(invalid)?;
        let headers = provider.header_map().map_err(invalid)?;
        let base_url = provider.base_url.trim_end_matches('/').to_string();
        Ok(Self {
            chat_url: format!("{base_url}/chat/completions"),
            base_url,
            api_key: provider.api_key.clone().unwrap_or_default(),
            headers,
        })
    }

    /// The base URL requests go to, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `{base_url}/chat/completions`.
    pub fn chat_url(&self) -> &str {
        &self.chat_url
    }

    /// `""` without a key, else `"<redacted>"` (for `Debug`).
    pub fn redacted_key(&self) -> &'static str {
        if self.api_key.is_empty() { "" } else { "<redacted>" }
    }

    /// The names of the provider's extra headers (for `Debug`).
    pub fn header_names(&self) -> Vec<&HeaderName> {
        self.headers.keys().collect()
    }

    /// The streaming chat request for `request` (see [`ChatHttpRequest`]
    /// for its headers).
    ///
    /// Errors: [`LlmError::Unavailable`] when the key is not a valid HTTP
    /// header value or the body cannot be encoded as JSON.
    pub fn chat(&self, request: &WireRequest<'_>) -> Result<ChatHttpRequest<'_>, LlmError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| LlmError::unavailable(format!("cannot encode the request: {e}")))?;
        let mut headers = HeaderMap::with_capacity(3 + self.headers.len());
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.add_provider_headers(&mut headers)?;
        Ok(ChatHttpRequest {
            url: &self.chat_url,
            headers,
            body: Bytes::from(body),
        })
    }

    /// `GET {base_url}/models` (the URL) and its headers: the provider's,
    /// then `authorization: Bearer <key>` when there is a key.
    ///
    /// Errors: [`LlmError::Unavailable`] when the key is not a valid HTTP
    /// header value.
    pub fn models(&self) -> Result<(String, HeaderMap), LlmError> {
        let mut headers = HeaderMap::with_capacity(1 + self.headers.len());
        self.add_provider_headers(&mut headers)?;
        Ok((format!("{}/models", self.base_url), headers))
    }

    /// Puts the provider's headers into `headers`, each replacing a header
    /// of the same name in its place (as reqwest's `RequestBuilder::headers`
    /// does), then appends `authorization: Bearer <key>` (sensitive) when
    /// there is a key (as its `bearer_auth` does).
    fn add_provider_headers(&self, headers: &mut HeaderMap) -> Result<(), LlmError> {
        for name in self.headers.keys() {
            let mut values = self.headers.get_all(name).iter().cloned();
            let Some(first) = values.next() else { continue };
            let mut entry = match headers.entry(name.clone()) {
                Entry::Occupied(mut entry) => {
                    entry.insert(first);
                    entry
                }
                Entry::Vacant(entry) => entry.insert_entry(first),
            };
            for value in values {
                entry.append(value);
            }
        }
        if !self.api_key.is_empty() {
            let mut value = HeaderValue::from_str(&format!("Bearer {}", self.api_key))
                .map_err(|_| LlmError::unavailable("the API key is not a valid HTTP header value"))?;
            value.set_sensitive(true);
            headers.append(AUTHORIZATION, value);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ChatRequest;

    fn provider(base_url: &str, key: Option<&str>, headers: &[(&str, &str)]) -> ProviderConfig {
        ProviderConfig {
            name: "p".to_string(),
            base_url: base_url.to_string(),
            api_key: key.map(str::to_string),
            api_key_env: None,
            models: Vec::new(),
            default_model: None,
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn request() -> ChatRequest {
        ChatRequest::user("ignored", "hi")
    }

    fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect()
    }

    #[test]
    fn the_chat_request_has_its_url_headers_in_order_and_body() {
        let upstream = Upstream::new(&provider("http://h:1/v1/", Some("sk"), &[("X-Title", "t")])).expect("upstream");
        let chat = request();
        let built = upstream
            .chat(&WireRequest {
                model: "m",
                request: &chat,
            })
            .expect("request");
        assert_eq!(built.url, "http://h:1/v1/chat/completions");
        assert_eq!(
            pairs(&built.headers),
            [
                ("accept", "text/event-stream"),
                ("content-type", "application/json"),
                ("x-title", "t"),
                ("authorization", "Bearer sk"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(built.headers[AUTHORIZATION].is_sensitive());
        let body: serde_json::Value = serde_json::from_slice(&built.body).expect("json");
        assert_eq!(body["model"], "m");
        assert_eq!(body["stream"], true);
    }

    #[test]
    fn a_provider_header_replaces_one_in_its_place_and_no_key_sends_none() {
        let upstream =
            Upstream::new(&provider("https://h/v1", None, &[("Accept", "application/x-ndjson")])).expect("upstream");
        let chat = request();
        let built = upstream
            .chat(&WireRequest {
                model: "m",
                request: &chat,
            })
            .expect("request");
        assert_eq!(
            pairs(&built.headers),
            [("accept", "application/x-ndjson"), ("content-type", "application/json")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        let (url, headers) = upstream.models().expect("models");
        assert_eq!(url, "https://h/v1/models");
        assert_eq!(
            pairs(&headers),
            [("accept".to_string(), "application/x-ndjson".to_string())]
        );
    }

    #[test]
    fn bad_settings_are_errors() {
        assert!(matches!(
            Upstream::new(&provider("ftp://h", None, &[])),
            Err(ProviderError::Invalid { .. })
        ));
        assert!(Upstream::new(&provider("http://h", None, &[("bad name", "x")])).is_err());
        let upstream = Upstream::new(&provider("http://h", Some("line\nbreak"), &[])).expect("upstream");
        assert_eq!(
            upstream.models().err(),
            Some(LlmError::unavailable("the API key is not a valid HTTP header value"))
        );
    }
}
