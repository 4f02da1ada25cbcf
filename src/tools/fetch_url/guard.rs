//! The SSRF guard: which addresses are public ([`classify`]) and the check
//! of one hop's host against them and the allow list ([`check_target`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

use super::FetchError;

/// Host names refused whatever they resolve to (cloud metadata services).
const METADATA_HOSTS: &[&str] = &["metadata.google.internal"];

/// The kind of an IP address, for the SSRF guard. Only [`AddressClass::Public`]
/// addresses are fetched from hosts not listed in `allow_hosts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable.
    Public,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, `fc00::/7` (unique
    /// local) and the deprecated site-local `fec0::/10`.
    Private,
    /// `169.254.0.0/16`, `fe80::/10`.
    LinkLocal,
    /// `0.0.0.0/8` ("this network"), `::`.
    Unspecified,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// Carrier-grade NAT shared space, `100.64.0.0/10`.
    SharedCgnat,
    /// Never public: `192.0.0.0/24`, the documentation ranges (`192.0.2.0/24`,
    /// `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`), benchmarking
    /// `198.18.0.0/15` and the future-use `240.0.0.0/4`.
    Reserved,
    /// Cloud metadata services: `169.254.169.254`, `fd00:ec2::254`.
    Metadata,
}

impl AddressClass {
    /// Whether addresses of this class may be fetched without `allow_hosts`.
    pub fn is_public(self) -> bool {
        self == AddressClass::Public
    }

    /// The class as a noun phrase, e.g. `"a loopback address"`.
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "a public address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::Private => "a private address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Multicast => "a multicast address",
            AddressClass::Broadcast => "a broadcast address",
            AddressClass::SharedCgnat => "a carrier-grade NAT (100.64.0.0/10) address",
            AddressClass::Reserved => "a reserved address",
            AddressClass::Metadata => "a cloud metadata address",
        }
    }
}

/// Classifies `ip`. IPv6 forms that carry an IPv4 address (IPv4-mapped
/// `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` and the NAT64 prefix
/// `64:ff9b::/96`) get the class of the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        AddressClass::Metadata
    } else if a == 0 {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressClass::SharedCgnat
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if matches!((a, b, c), (192, 0, 0 | 2) | (198, 51, 100) | (203, 0, 113))
        || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let segments = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) {
        return AddressClass::Metadata;
    }
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated).
    if let Some(v4) = ip.to_ipv4() {
        return classify_v4(v4);
    }
    // NAT64 well-known prefix 64:ff9b::/96.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., hi, lo] = segments;
        let v4 = Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
        return classify_v4(v4);
    }
    let first = segments[0];
    if first & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else if first == 0x2001 && segments[1] == 0x0db8 {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

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
    let allowed = allow_hosts
        .iter()
        .any(|h| unbracket(h.trim()).eq_ignore_ascii_case(bare));
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
