//! The SSRF guard: which addresses are public ([`classify`], in
//! `guard/classify.rs`) and the check of one hop's host against them and the
//! allow list ([`check_target`]).

mod classify;

use std::net::{IpAddr, SocketAddr};

use reqwest::Url;

use super::FetchError;
pub use classify::classify;

/// Host names refused whatever they resolve to (cloud metadata services).
const METADATA_HOSTS: &[&str] = &["metadata.google.internal"];

/// Where one hop connects, as [`check_target`] allowed it.
pub(super) struct Target {
    /// For a host name, the name (lowercase, without brackets) and the
    /// addresses it was checked against, with the URL's port (the connection
    /// is pinned to them); `None` for an IP literal, which is connected to as
    /// it is.
    pub(super) pin: Option<(String, Vec<SocketAddr>)>,
}

/// Resolves the URL's host and applies the SSRF guard: the host is allowed
/// when it is in `allow_hosts` (exact, case-insensitive, brackets optional
/// around IPv6) or when it and every address it resolves to are public.
///
/// Errors: [`FetchError::Refused`] (with an empty `context`) for a refused
/// host or address; [`FetchError::Resolve`] when DNS fails or answers nothing.
pub(super) async fn check_target(url: &Url, allow_hosts: &[String]) -> Result<Target, FetchError> {
    let host = url.host_str().unwrap_or_default();
    let bare = unbracket(host);
    let allowed = is_allowed(host, allow_hosts);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        // An IP literal is connected to as it is: nothing to resolve or pin.
        let class = classify(ip);
        if !allowed && !class.is_public() {
            return Err(refused(format!("{ip} is {}", class.describe())));
        }
        return Ok(Target { pin: None });
    }
    let name = bare.trim_end_matches('.').to_ascii_lowercase();
    if !allowed && METADATA_HOSTS.contains(&name.as_str()) {
        return Err(refused(format!("{host} is a cloud metadata host")));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    let resolve_error = |reason: String| FetchError::Resolve {
        host: host.to_string(),
        reason,
    };
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| resolve_error(e.to_string()))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(resolve_error("no addresses found".into()));
    }
    if !allowed
        && let Some((ip, class)) = addrs
            .iter()
            .map(|a| (a.ip(), classify(a.ip())))
            .find(|(_, class)| !class.is_public())
    {
        return Err(refused(format!("{host} resolves to {ip}, {}", class.describe())));
    }
    Ok(Target {
        pin: Some((bare.to_string(), addrs)),
    })
}

/// Whether `host` (a URL's host, IPv6 in brackets or not) is in
/// `allow_hosts`: exact, case-insensitive, brackets optional around IPv6.
pub(super) fn is_allowed(host: &str, allow_hosts: &[String]) -> bool {
    let bare = unbracket(host);
    allow_hosts
        .iter()
        .any(|h| unbracket(h.trim()).eq_ignore_ascii_case(bare))
}

/// A host without the brackets of an IPv6 literal (`[::1]` -> `::1`).
fn unbracket(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// [`FetchError::Refused`] for the URL asked for (no redirect context).
fn refused(subject: String) -> FetchError {
    FetchError::Refused {
        context: String::new(),
        subject,
    }
}

#[cfg(test)]
mod tests;
