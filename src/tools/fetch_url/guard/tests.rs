//! Tests of the SSRF guard: the address classes and the host check.

use super::super::fetch::parse_url;
use super::classify::AddressClass;
use super::*;
use AddressClass::*;

fn class(text: &str) -> AddressClass {
    classify(text.parse().expect("an IP address"))
}

#[test]
fn ipv4_ranges() {
    let cases = [
        ("127.0.0.1", Loopback),
        ("127.255.255.254", Loopback),
        ("10.0.0.1", Private),
        ("10.255.255.255", Private),
        ("172.16.0.1", Private),
        ("172.31.255.255", Private),
        ("192.168.1.1", Private),
        ("169.254.0.1", LinkLocal),
        ("169.254.255.255", LinkLocal),
        ("169.254.169.254", Metadata),
        ("0.0.0.0", Unspecified),
        ("0.1.2.3", Unspecified),
        ("224.0.0.1", Multicast),
        ("239.255.255.250", Multicast),
        ("255.255.255.255", Broadcast),
        ("100.64.0.1", SharedCgnat),
        ("100.127.255.255", SharedCgnat),
        ("192.0.0.8", Reserved),
        ("192.0.2.1", Reserved),
        ("198.18.0.1", Reserved),
        ("198.19.255.255", Reserved),
        ("198.51.100.7", Reserved),
        ("203.0.113.9", Reserved),
        ("240.0.0.1", Reserved),
        // Public, including the neighbours of every refused range.
        ("8.8.8.8", Public),
        ("1.1.1.1", Public),
        ("93.184.216.34", Public),
        ("9.255.255.255", Public),
        ("11.0.0.0", Public),
        ("172.15.255.255", Public),
        ("172.32.0.0", Public),
        ("192.167.255.255", Public),
        ("192.169.0.0", Public),
        ("169.253.255.255", Public),
        ("169.255.0.0", Public),
        ("100.63.255.255", Public),
        ("100.128.0.0", Public),
        ("126.255.255.255", Public),
        ("128.0.0.0", Public),
        ("223.255.255.255", Public),
        ("198.17.255.255", Public),
        ("198.20.0.0", Public),
    ];
    for (ip, expected) in cases {
        assert_eq!(class(ip), expected, "{ip}");
    }
}

#[test]
fn ipv6_ranges() {
    let cases = [
        ("::1", Loopback),
        ("::", Unspecified),
        ("fc00::1", Private),
        ("fd12:3456::1", Private),
        ("fdff:ffff::1", Private),
        ("fec0::1", Private),
        ("fe80::1", LinkLocal),
        ("febf::1", LinkLocal),
        ("ff02::1", Multicast),
        ("ff05::2", Multicast),
        ("fd00:ec2::254", Metadata),
        ("2001:db8::1", Reserved),
        ("2001:4860:4860::8888", Public),
        ("2606:4700:4700::1111", Public),
        ("2a00:1450:4001::1", Public),
        // Outside 2000::/3, so not global unicast (issue 21, item 8: these
        // two were wrongly public before).
        ("fbff:ffff::1", Reserved),
        ("fe00::1", Reserved),
    ];
    for (ip, expected) in cases {
        assert_eq!(class(ip), expected, "{ip}");
    }
}

#[test]
fn ipv6_forms_carrying_ipv4_get_the_ipv4_class() {
    let cases = [
        ("::ffff:127.0.0.1", Loopback),
        ("::ffff:7f00:1", Loopback),
        ("::ffff:10.1.2.3", Private),
        ("::ffff:172.16.0.1", Private),
        ("::ffff:192.168.0.1", Private),
        ("::ffff:169.254.1.1", LinkLocal),
        ("::ffff:169.254.169.254", Metadata),
        ("::ffff:0.0.0.0", Unspecified),
        ("::ffff:224.0.0.1", Multicast),
        ("::ffff:255.255.255.255", Broadcast),
        ("::ffff:100.64.0.1", SharedCgnat),
        ("::ffff:8.8.8.8", Public),
        // IPv4-compatible (deprecated) and NAT64.
        ("::127.0.0.1", Loopback),
        ("::10.0.0.1", Private),
        ("64:ff9b::127.0.0.1", Loopback),
        ("64:ff9b::a9fe:a9fe", Metadata),
        ("64:ff9b::192.168.1.1", Private),
        ("64:ff9b::8.8.8.8", Public),
    ];
    for (ip, expected) in cases {
        assert_eq!(class(ip), expected, "{ip}");
    }
}

#[test]
fn only_global_unicast_ipv6_is_public() {
    let cases = [
        // Outside 2000::/3.
        ("100::1", Reserved),
        ("100::ffff:ffff:ffff:ffff", Reserved),
        ("1fff:ffff::1", Reserved),
        ("4000::1", Reserved),
        ("e000::1", Reserved),
        ("::1:0:0:1", Reserved),
        // Documentation.
        ("2001:db8:ffff::1", Reserved),
        ("3fff::1", Reserved),
        ("3fff:fff:ffff::1", Reserved),
        // IETF protocol assignments (2001::/23), e.g. benchmarking, ORCHID.
        ("2001:2::1", Reserved),
        ("2001:10::1", Reserved),
        ("2001:1ff::1", Reserved),
        // ... except their globally reachable blocks.
        ("2001:1::1", Public),
        ("2001:3::1", Public),
        ("2001:4:112::1", Public),
        ("2001:20::1", Public),
        // Neighbours that are global unicast.
        ("2001:200::1", Public),
        ("2001:db9::1", Public),
        ("3fff:1000::1", Public),
        ("3ffe::1", Public),
        ("2000::1", Public),
        ("3fff:ffff:ffff::1", Public),
    ];
    for (ip, expected) in cases {
        assert_eq!(class(ip), expected, "{ip}");
    }
}

#[test]
fn every_ipv6_form_carrying_ipv4_gets_the_ipv4_class() {
    let cases = [
        // 6to4 2002::/16: the IPv4 address follows the prefix.
        ("2002:7f00:1::", Loopback),
        ("2002:a9fe:a9fe::1", Metadata),
        ("2002:c0a8:101::1", Private),
        ("2002:0a00:0001:1::1", Private),
        ("2002:c000:201::1", Reserved),
        ("2002:808:808::1", Public),
        // Teredo 2001::/32: server, then client xor ffff:ffff.
        ("2001:0:7f00:1::", Loopback),
        ("2001:0:808:808::80ff:fefe", Loopback),
        ("2001:0:808:808::3f57:fefe", Private),
        ("2001:0:808:808::5601:5601", Metadata),
        ("2001:0:808:808::f7f7:f7f7", Public),
        // NAT64 well-known and local-use prefixes.
        ("64:ff9b::a00:1", Private),
        ("64:ff9b::c633:6401", Reserved),
        // (local use: the prefix length is the operator's choice, so each
        // RFC 6052 layout must carry a public address).
        ("64:ff9b:1::7f00:1", Loopback),
        ("64:ff9b:1::a00:1", Private),
        ("64:ff9b:1:a08:808:808:808:808", Private),
        ("64:ff9b:1::808:808", Unspecified),
        ("64:ff9b:1:808:808:808:808:808", Public),
        // IPv4-translated ::ffff:0:0:0/96 and IPv4-compatible ::/96.
        ("::ffff:0:7f00:1", Loopback),
        ("::ffff:0:a9fe:a9fe", Metadata),
        ("::ffff:0:808:808", Public),
        ("::8.8.8.8", Public),
        ("::192.0.2.1", Reserved),
        // IPv4 documentation ranges, mapped.
        ("::ffff:192.0.2.1", Reserved),
        ("::ffff:198.51.100.1", Reserved),
        ("::ffff:203.0.113.1", Reserved),
        ("192.88.99.1", Reserved),
    ];
    for (ip, expected) in cases {
        assert_eq!(class(ip), expected, "{ip}");
    }
}

#[test]
fn only_public_is_public() {
    assert!(Public.is_public());
    for c in [
        Loopback,
        Private,
        LinkLocal,
        Unspecified,
        Multicast,
        Broadcast,
        SharedCgnat,
        Reserved,
        Metadata,
    ] {
        assert!(!c.is_public(), "{c:?}");
        assert!(c.describe().starts_with('a'), "{c:?}");
    }
}

fn refused(subject: &str) -> Result<Target, FetchError> {
    Err(FetchError::Refused {
        context: String::new(),
        subject: subject.into(),
    })
}

async fn check(url: &str, allow: &[&str]) -> Result<Target, FetchError> {
    let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
    check_target(&parse_url(url).expect("valid url"), &allow).await
}

#[tokio::test]
async fn the_guard_refuses_literals_and_metadata_names_without_connecting() {
    for (url, subject) in [
        ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("http://127.1/", "127.0.0.1 is a loopback address"),
        ("http://2130706433/", "127.0.0.1 is a loopback address"),
        ("http://[::1]:8080/", "::1 is a loopback address"),
        ("http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1 is a private address"),
        (
            "http://169.254.169.254/latest/",
            "169.254.169.254 is a cloud metadata address",
        ),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a cloud metadata address"),
        ("http://0.0.0.0:80/", "0.0.0.0 is an unspecified address"),
        (
            "http://metadata.google.internal/computeMetadata/v1/",
            "metadata.google.internal is a cloud metadata host",
        ),
        (
            "http://METADATA.google.internal./",
            "metadata.google.internal. is a cloud metadata host",
        ),
    ] {
        let got = check(url, &[]).await.map(|_| ());
        assert_eq!(got, refused(subject).map(|_| ()), "{url}");
    }
    // The allow list is exact and case-insensitive.
    assert!(check("http://127.0.0.1/", &["127.0.0.1"]).await.is_ok());
    assert!(check("http://[::1]/", &["[::1]"]).await.is_ok());
    assert!(check("http://[::1]/", &["::1"]).await.is_ok());
    assert!(check("http://127.0.0.1/", &["127.0.0.2"]).await.is_err());
}

#[tokio::test]
async fn localhost_is_refused_by_name_and_pinned_when_allowed() {
    let got = check("http://localhost:9/", &[]).await.map(|_| ());
    match got {
        Err(FetchError::Refused { subject, .. }) => {
            assert!(subject.starts_with("localhost resolves to "), "{subject}");
            assert!(subject.ends_with(", a loopback address"), "{subject}");
        }
        other => panic!("localhost is refused: {other:?}"),
    }
    let target = check("http://LocalHost:9/", &["LOCALHOST"]).await.expect("allowed");
    let (host, addrs) = target.pin.expect("a host name is pinned");
    assert_eq!(host, "localhost");
    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9), "{addrs:?}");
}
