//! Which IP addresses are public: [`AddressClass`] and [`classify`].
//!
//! The rule is an allow list, not a block list: an IPv6 address is public
//! only inside the global unicast space `2000::/3`, minus its special-purpose
//! ranges; everything outside it is refused. Every IPv6 form that can carry
//! an IPv4 address (so that a translator, relay or dual stack would connect
//! to that IPv4 address) is judged by the IPv4 address it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    /// Never public: IPv4 `192.0.0.0/24`, the 6to4 relay anycast
    /// `192.88.99.0/24`, the documentation ranges (`192.0.2.0/24`,
    /// `198.51.100.0/24`, `203.0.113.0/24`), benchmarking `198.18.0.0/15` and
    /// the future-use `240.0.0.0/4`; IPv6 outside `2000::/3` (the discard
    /// prefix `100::/64` among it), the documentation ranges `2001:db8::/32`
    /// and `3fff::/20`, and the IETF protocol assignments `2001::/23` (except
    /// its few globally reachable blocks).
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

/// Classifies `ip`.
///
/// IPv6 forms that carry IPv4 addresses get the class of the IPv4 addresses
/// they carry (the first non-public one when there are several): IPv4-mapped
/// `::ffff:0:0/96`, IPv4-translated `::ffff:0:0:0/96`, IPv4-compatible
/// `::/96`, NAT64 `64:ff9b::/96`, the local-use NAT64 prefix
/// `64:ff9b:1::/48` (every RFC 6052 layout it may use is checked), 6to4
/// `2002::/16` and Teredo `2001::/32` (server and client address).
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
    } else if matches!(
        (a, b, c),
        (192, 0, 0 | 2) | (192, 88, 99) | (198, 51, 100) | (203, 0, 113)
    ) || (a == 198 && (b & 0xfe) == 18)
        || a >= 240
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254) {
        return AddressClass::Metadata;
    }
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if let Some(carried) = embedded_v4(ip) {
        return carried
            .into_iter()
            .map(classify_v4)
            .find(|class| !class.is_public())
            .unwrap_or(AddressClass::Public);
    }
    let s = ip.segments();
    let first = s[0];
    if first & 0xff00 == 0xff00 {
        AddressClass::Multicast
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else if first & 0xe000 != 0x2000 || special_global_unicast(s) {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// Whether an address of `2000::/3` (as segments) is in one of its ranges
/// that are not globally reachable: the documentation prefixes
/// `2001:db8::/32` and `3fff::/20`, and the IETF protocol assignments
/// `2001::/23` except the blocks the IANA registry marks globally reachable
/// (`2001:1::1/128`, `2001:1::2/128`, `2001:3::/32`, `2001:4:112::/48`,
/// `2001:20::/28`, `2001:30::/28`). Teredo (`2001::/32`) never gets here.
fn special_global_unicast(s: [u16; 8]) -> bool {
    let documentation = (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] & 0xf000 == 0);
    let protocol_assignment = s[0] == 0x2001 && s[1] < 0x0200;
    let reachable = s[0] == 0x2001
        && (matches!(s[1..], [0x1, 0, 0, 0, 0, 0, 0x1 | 0x2])
            || s[1] == 0x3
            || (s[1] == 0x4 && s[2] == 0x112)
            || (0x20..=0x3f).contains(&s[1]));
    documentation || (protocol_assignment && !reachable)
}

/// The IPv4 addresses an IPv6 address carries, when it is one of the forms
/// that carry one (see [`classify`]); `None` for any other address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Vec<Ipv4Addr>> {
    let s = ip.segments();
    let b = ip.octets();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let at = |bytes: [u8; 4]| Ipv4Addr::from(bytes);
    match s {
        // IPv4-compatible ::/96 (:: and ::1 are handled before) and
        // IPv4-mapped ::ffff:0:0/96.
        [0, 0, 0, 0, 0, 0 | 0xffff, hi, lo] => Some(vec![v4(hi, lo)]),
        // IPv4-translated (SIIT) ::ffff:0:0:0/96.
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(vec![v4(hi, lo)]),
        // NAT64 well-known prefix 64:ff9b::/96.
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(vec![v4(hi, lo)]),
        // Local-use NAT64 64:ff9b:1::/48: the operator picks a prefix of 48,
        // 56, 64 or 96 bits (RFC 6052 layouts, skipping the u octet 8), so
        // every place the IPv4 address may sit is checked (the /96 one first,
        // the usual layout, so its class is the one reported).
        [0x64, 0xff9b, 0x1, ..] => Some(vec![
            at([b[12], b[13], b[14], b[15]]),
            at([b[9], b[10], b[11], b[12]]),
            at([b[7], b[9], b[10], b[11]]),
            at([b[6], b[7], b[9], b[10]]),
        ]),
        // 6to4 2002::/16: the IPv4 address follows the prefix.
        [0x2002, hi, lo, ..] => Some(vec![v4(hi, lo)]),
        // Teredo 2001::/32: the server, then the client obfuscated (xor).
        [0x2001, 0, server_hi, server_lo, .., client_hi, client_lo] => {
            Some(vec![v4(server_hi, server_lo), v4(!client_hi, !client_lo)])
        }
        _ => None,
    }
}
