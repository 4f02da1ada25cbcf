//! Access control for every route but `/healthz`, `/readyz`, `/metrics` and
//! `/api/openapi.json`:
//! API keys (`Authorization: Bearer <key>`, compared as SHA-256 digests in
//! constant time) and per-key limits (requests per minute, replies running
//! at once, SSE streams open at once), enforced with the `governor` crate
//! and a semaphore per key and limit.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::{AuthMode, Config};

/// The key a request was made with (a short digest prefix, never the key),
/// or `anonymous` when authentication is off.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller(pub String);

/// A running reply's slot in its caller's concurrency limit; released when
/// the reply ends (the chat task holds it).
pub struct ReplySlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// An open SSE response's slot in its caller's stream limit; released when
/// the response body is dropped (the stream ended or the client went away).
pub struct StreamSlot(#[allow(dead_code)] OwnedSemaphorePermit);

/// A count per caller of something held at once (replies, streams): a
/// semaphore of `limit` permits per caller, made on first use.
struct PerCaller {
    semaphores: Mutex<HashMap<String, Arc<Semaphore>>>,
    limit: usize,
}

impl PerCaller {
    fn new(limit: usize) -> Self {
        Self {
            semaphores: Mutex::new(HashMap::new()),
            limit,
        }
    }

    /// One of `caller`'s permits; `None` when all `limit` are held.
    fn take(&self, caller: &Caller) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut semaphores = self.semaphores.lock().unwrap_or_else(|p| p.into_inner());
            semaphores
                .entry(caller.0.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
                .clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// Keys, rate limiter, and per-key reply and stream slots.
pub struct Access {
    digests: Vec<[u8; 32]>,
    enforce: bool,
    limiter: DefaultKeyedRateLimiter<String>,
    replies: PerCaller,
    streams: PerCaller,
}

impl Access {
    /// From the config: keys are hashed at once and the plain keys dropped.
    /// Without keys (or with `auth = "none"`) it logs a warning: every
    /// client may then use every route, and the per-key rate limits and
    /// reply and stream caps are off.
    pub fn new(config: &Config) -> Self {
        let per_minute = NonZeroU32::new(config.limits.requests_per_minute).unwrap_or(NonZeroU32::MIN);
        let enforce = config.auth == AuthMode::Keys && !config.api_keys.is_empty();
        if !enforce {
            tracing::warn!(
                listen = %config.listen,
                "authentication is off (no API keys, or auth = \"none\"): any client that reaches this address \
                 may use every route, and the per-key rate limits and reply and stream caps do not apply; set \
                 CHATD_API_KEYS"
            );
        }
        // Without authentication there are no keys to limit: no cap.
        let cap = |limit: u32| {
            if enforce {
                limit as usize
            } else {
                Semaphore::MAX_PERMITS
            }
        };
        Self {
            digests: config.api_keys.iter().map(|k| digest(k.as_bytes())).collect(),
            enforce,
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            replies: PerCaller::new(cap(config.limits.concurrent_replies)),
            streams: PerCaller::new(cap(config.limits.concurrent_streams)),
        }
    }

    /// Checks the bearer key; `None` for a missing or wrong key.
    fn authenticate(&self, authorization: Option<&HeaderValue>) -> Option<Caller> {
        if !self.enforce {
            return Some(Caller("anonymous".into()));
        }
        // RFC 7235 section 2.1: the auth scheme is case-insensitive.
        let (scheme, presented) = authorization?.to_str().ok()?.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let presented = presented.trim();
        let presented = digest(presented.as_bytes());
        // Compare against every key, without stopping at a match.
        let mut found: Option<usize> = None;
        for (i, d) in self.digests.iter().enumerate() {
            if bool::from(d.ct_eq(&presented)) {
                found = Some(i);
            }
        }
        found.map(|_| Caller(hex(&presented[..6])))
    }

    /// Takes one of the caller's reply slots; `None` when all are in use.
    /// Without authentication there are no keys to limit: every request
    /// gets a slot.
    pub fn reply_slot(&self, caller: &Caller) -> Option<ReplySlot> {
        self.replies.take(caller).map(ReplySlot)
    }

    /// Takes one of the caller's stream slots (`limits.concurrent_streams`)
    /// for an SSE response; `None` when all are in use. Without
    /// authentication every request gets one.
    pub fn stream_slot(&self, caller: &Caller) -> Option<StreamSlot> {
        self.streams.take(caller).map(StreamSlot)
    }

    /// Forgets idle rate-limit state (run periodically).
    pub fn retain_recent(&self) {
        self.limiter.retain_recent();
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Routes that stay open without a key and are not rate limited.
fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/api/openapi.json")
}

/// The middleware: 401 `unauthorized` without a valid key, 429
/// `rate_limited` with `Retry-After` (seconds) past the per-minute quota.
pub async fn middleware(State(access): State<Arc<Access>>, mut request: Request, next: Next) -> Response {
    if is_open(request.uri().path()) || request.method() == Method::OPTIONS {
        return next.run(request).await;
    }
    let Some(caller) = access.authenticate(request.headers().get(header::AUTHORIZATION)) else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API key as the header Authorization: Bearer <key>",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    };
    if access.enforce
        && let Err(not_until) = access.limiter.check_key(&caller.0)
    {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return too_many(
            "rate_limited",
            format!("more than the allowed requests per minute for this key; retry in {seconds} s"),
            seconds.max(1),
        );
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// A 429 answer with `Retry-After`.
pub fn too_many(code: &'static str, message: String, retry_after_secs: u64) -> Response {
    let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message).into_response();
    if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &[&str]) -> Config {
        Config {
            api_keys: keys.iter().map(|k| k.to_string()).collect(),
            ..Config::default()
        }
    }

    #[test]
    fn keys_are_checked_by_digest() {
        let access = Access::new(&config(&["key-one-0123456789", "key-two-0123456789"]));
        let header = |v: &str| HeaderValue::from_str(v).expect("header");
        assert!(
            access
                .authenticate(Some(&header("Bearer key-two-0123456789")))
                .is_some()
        );
        assert!(
            access
                .authenticate(Some(&header("Bearer key-three-012345678")))
                .is_none()
        );
        assert!(access.authenticate(Some(&header("key-two-0123456789"))).is_none());
        assert!(access.authenticate(None).is_none());
        let open = Access::new(&config(&[]));
        assert_eq!(open.authenticate(None), Some(Caller("anonymous".into())));
    }

    #[test]
    fn reply_slots_are_limited_per_caller() {
        let mut c = config(&["key-one-0123456789"]);
        c.limits.concurrent_replies = 2;
        let access = Access::new(&c);
        let caller = Caller("k".into());
        let a = access.reply_slot(&caller);
        let b = access.reply_slot(&caller);
        assert!(a.is_some() && b.is_some());
        assert!(access.reply_slot(&caller).is_none());
        assert!(access.reply_slot(&Caller("other".into())).is_some());
        drop(a);
        assert!(access.reply_slot(&caller).is_some());
    }

    #[test]
    fn stream_slots_are_limited_per_caller_and_apart_from_reply_slots() {
        let mut c = config(&["key-one-0123456789"]);
        c.limits.concurrent_streams = 1;
        c.limits.concurrent_replies = 1;
        let access = Access::new(&c);
        let caller = Caller("k".into());
        let stream = access.stream_slot(&caller);
        assert!(stream.is_some());
        assert!(access.stream_slot(&caller).is_none());
        assert!(access.reply_slot(&caller).is_some());
        drop(stream);
        assert!(access.stream_slot(&caller).is_some());
        let open = Access::new(&Config {
            limits: c.limits.clone(),
            ..config(&[])
        });
        let anonymous = Caller("anonymous".into());
        let held: Vec<_> = (0..4).map(|_| open.stream_slot(&anonymous)).collect();
        assert!(held.iter().all(Option::is_some), "no cap without keys");
    }
}
