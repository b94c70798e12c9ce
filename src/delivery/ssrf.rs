//! The SSRF guard's decision: which addresses a webhook may connect to.
//!
//! Customers type in their own webhook URLs, so without a guard the daemon
//! is their way into the platform's network (the cloud metadata service at
//! 169.254.169.254, a database on 10.0.0.5). [`classify`] names the special
//! range an address is in (loopback, private, link-local, shared, reserved,
//! documentation, multicast, …), looking through the IPv6 forms that carry an
//! IPv4 address (mapped, compatible, translated, NAT64, 6to4); [`Guard`]
//! refuses those unless the operator listed them in
//! `delivery.allow_networks`.
//!
//! This module is pure: it decides about addresses. Checking the *resolved*
//! addresses of every connection is `resolve`'s job, and what a refusal means
//! for the delivery is `state`'s.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The config key that lets refused ranges through; named in every refusal.
pub const ALLOW_KEY: &str = "delivery.allow_networks";

/// IPv4 ranges that are not the public internet (IANA special-purpose
/// registry), most specific first.
const V4_RANGES: &[(Ipv4Net, &str)] = &[
    (v4(255, 255, 255, 255, 32), "broadcast"),
    (v4(0, 0, 0, 0, 32), "unspecified"),
    (v4(0, 0, 0, 0, 8), "\"this network\" (0.0.0.0/8)"),
    (v4(10, 0, 0, 0, 8), "private (RFC 1918)"),
    (
        v4(100, 64, 0, 0, 10),
        "shared address space (100.64.0.0/10)",
    ),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (
        v4(169, 254, 169, 254, 32),
        "link-local (cloud metadata service)",
    ),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(172, 16, 0, 0, 12), "private (RFC 1918)"),
    (v4(192, 0, 0, 0, 24), "reserved (IETF protocol assignments)"),
    (v4(192, 0, 2, 0, 24), "documentation (TEST-NET-1)"),
    (v4(192, 88, 99, 0, 24), "reserved (6to4 relay anycast)"),
    (v4(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (v4(198, 18, 0, 0, 15), "reserved (benchmarking)"),
    (v4(198, 51, 100, 0, 24), "documentation (TEST-NET-2)"),
    (v4(203, 0, 113, 0, 24), "documentation (TEST-NET-3)"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved (240.0.0.0/4)"),
];

/// IPv6 ranges that are not the public internet and carry no IPv4 address
/// to look through, most specific first. Everything outside 2000::/3 (the
/// only range allocated for global unicast) is refused as well.
const V6_RANGES: &[(Ipv6Net, &str)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        "reserved (local-use NAT64)",
    ),
    (
        v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),
        "reserved (discard-only)",
    ),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "Teredo tunnelling"),
    (
        v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),
        "reserved (benchmarking)",
    ),
    (
        v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28),
        "reserved (ORCHID)",
    ),
    (
        v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28),
        "reserved (ORCHIDv2)",
    ),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique-local"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),
        "reserved (site-local)",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(s: [u16; 8], prefix: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]),
        prefix,
    )
}

/// The IPv4 address an IPv6 address carries, if it is one of the forms that
/// reach an IPv4 host: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`,
/// deprecated), translated (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`)
/// or 6to4 (`2002:aabb:ccdd::/48`).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        // `::` and `::1` are themselves, not 0.0.0.0 and 0.0.0.1.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, _, _, _, _, _, _, _] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

/// The special range `ip` is in, or `None` for a public address. An IPv6
/// form that carries an IPv4 address is judged by that address.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => V4_RANGES
            .iter()
            .find(|(net, _)| net.contains(&v4))
            .map(|(_, name)| *name),
        IpAddr::V6(v6) => {
            if let Some(inner) = embedded_v4(v6) {
                return classify(IpAddr::V4(inner));
            }
            if let Some((_, name)) = V6_RANGES.iter().find(|(net, _)| net.contains(&v6)) {
                return Some(name);
            }
            // Global unicast is 2000::/3; the rest is unallocated.
            (v6.segments()[0] & 0xe000 != 0x2000).then_some("reserved (outside 2000::/3)")
        }
    }
}

/// Why an address was refused: the address, its range and the key that
/// would allow it. The `Display` text is the delivery's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused to connect to {addr}: {range} address, not allowed by {ALLOW_KEY}")]
pub struct Refused {
    /// The refused address, as resolved.
    pub addr: IpAddr,
    /// The range it is in ([`classify`]).
    pub range: &'static str,
}

impl Refused {
    /// The reason recorded on the delivery, which the customer sees (API,
    /// console): the range and the key, never the address itself, so that
    /// a customer cannot map the operator's internal names to addresses.
    /// The full text ([`Refused`]'s `Display`) goes to the log.
    pub fn public_reason(&self) -> String {
        format!(
            "refused to connect: the host resolves to a {} address, not allowed by {ALLOW_KEY}",
            self.range
        )
    }
}

/// The guard: refuses special ranges except those in the allow list.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Guard {
    allow: Vec<IpNet>,
    /// Where `allow` was read from (the config file's path, or the
    /// defaults' description), for the hint of [`Guard::refusal_hint`];
    /// empty when the hint must not name it (the API).
    source: String,
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.allow.iter().map(|n| n.to_string()))
            .finish()
    }
}

impl Guard {
    /// A guard that lets `allow` through (`delivery.allow_networks`).
    pub fn new(allow: Vec<IpNet>) -> Guard {
        Guard {
            allow,
            source: String::new(),
        }
    }

    /// The same guard, remembering that its allow list was read from
    /// `source` (a config file's path, or [`crate::config::DEFAULTS_SOURCE`]
    /// when no file was read) so that a refusal can say where to allow it.
    pub fn with_source(mut self, source: &str) -> Guard {
        self.source = source.to_owned();
        self
    }

    /// Why `refused` is refused at `channel create`/`update`, and what an
    /// operator types to let it through: the exact lines and the file to
    /// put them in (the file that was read, or a new `./config.toml` when
    /// none was). `also` are further refused addresses of the same host
    /// (`localhost` is 127.0.0.1 and ::1): the lines allow them too.
    /// Allowing a loopback address allows the loopback network (what a
    /// local test needs); any other address is allowed alone.
    pub fn refusal_hint(&self, refused: &Refused, also: &[Refused]) -> String {
        let mut nets: Vec<String> = Vec::new();
        for r in std::iter::once(refused).chain(also) {
            let net = format!("\"{}\"", allow_entry(r.addr));
            if !nets.contains(&net) {
                nets.push(net);
            }
        }
        let nets = nets.join(", ");
        let why = format!(
            "{} is a {} address, refused unless {ALLOW_KEY} allows it (the SSRF guard)",
            refused.addr, refused.range
        );
        let lines = format!("`[delivery]` and `allow_networks = [{nets}]`");
        let test = "e.g. to test with `notification-reconciler sink` on 127.0.0.1";
        if self.source.is_empty() {
            // The API: its callers may be customers, who need not know
            // where the service's files are.
            format!(
                "{why}; to allow it ({test}), the service's operator adds the lines {lines} \
                 to its config file"
            )
        } else if self.source.starts_with('<') {
            format!(
                "{why}; to allow it ({test}): no config file was read, so create ./config.toml \
                 (or pass --config FILE) with the lines {lines}"
            )
        } else if self.allow.is_empty() {
            format!(
                "{why}; to allow it ({test}), add to {} the lines {lines}",
                self.source
            )
        } else {
            format!(
                "{why}; to allow it ({test}), add {nets} to allow_networks in the [delivery] section of {}",
                self.source
            )
        }
    }

    /// Whether a connection to `ip` may be made. An address in an allowed
    /// network passes; so does an IPv6 form of an IPv4 address in an allowed
    /// IPv4 network (allowing 127.0.0.0/8 allows `::ffff:127.0.0.1`).
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(range) = classify(ip) else {
            return Ok(());
        };
        let inner = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allowed = self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || inner.is_some_and(|i| net.contains(&i)));
        if allowed {
            Ok(())
        } else {
            Err(Refused { addr: ip, range })
        }
    }
}

/// The `allow_networks` entry that lets `addr` through: the loopback
/// network for a loopback address, else the address alone.
fn allow_entry(addr: IpAddr) -> String {
    let addr = match addr {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    };
    match addr {
        IpAddr::V4(v4) if v4.is_loopback() => "127.0.0.0/8".into(),
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<&'static str> {
        classify(s.parse().expect("test address"))
    }

    #[test]
    fn every_special_ipv4_range_is_classified() {
        for (addr, range) in [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "\"this network\" (0.0.0.0/8)"),
            ("10.0.0.5", "private (RFC 1918)"),
            ("10.255.255.255", "private (RFC 1918)"),
            ("100.64.0.1", "shared address space (100.64.0.0/10)"),
            ("100.127.255.255", "shared address space (100.64.0.0/10)"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("169.254.169.254", "link-local (cloud metadata service)"),
            ("169.254.1.1", "link-local"),
            ("172.16.0.1", "private (RFC 1918)"),
            ("172.31.255.255", "private (RFC 1918)"),
            ("192.0.0.8", "reserved (IETF protocol assignments)"),
            ("192.0.2.1", "documentation (TEST-NET-1)"),
            ("192.88.99.1", "reserved (6to4 relay anycast)"),
            ("192.168.1.1", "private (RFC 1918)"),
            ("198.18.0.1", "reserved (benchmarking)"),
            ("198.19.255.255", "reserved (benchmarking)"),
            ("198.51.100.7", "documentation (TEST-NET-2)"),
            ("203.0.113.9", "documentation (TEST-NET-3)"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved (240.0.0.0/4)"),
            ("255.255.255.255", "broadcast"),
        ] {
            assert_eq!(class(addr), Some(range), "{addr}");
        }
    }

    #[test]
    fn public_ipv4_addresses_and_range_edges_pass() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
        ] {
            assert_eq!(class(addr), None, "{addr}");
        }
    }

    #[test]
    fn every_special_ipv6_range_is_classified() {
        for (addr, range) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "reserved (site-local)"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001::1", "Teredo tunnelling"),
            ("2001:2::1", "reserved (benchmarking)"),
            ("2001:10::1", "reserved (ORCHID)"),
            ("2001:20::1", "reserved (ORCHIDv2)"),
            ("64:ff9b:1::1", "reserved (local-use NAT64)"),
            ("100::1", "reserved (discard-only)"),
            ("4000::1", "reserved (outside 2000::/3)"),
            ("1::1", "reserved (outside 2000::/3)"),
        ] {
            assert_eq!(class(addr), Some(range), "{addr}");
        }
        for addr in ["2606:4700:4700::1111", "2a00:1450::1", "2001:4860::8888"] {
            assert_eq!(class(addr), None, "{addr}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_judged_by_the_ipv4_address() {
        for (addr, range) in [
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:7f00:1", "loopback"),
            (
                "::ffff:169.254.169.254",
                "link-local (cloud metadata service)",
            ),
            ("::ffff:10.0.0.5", "private (RFC 1918)"),
            ("::127.0.0.1", "loopback"),
            ("::10.0.0.5", "private (RFC 1918)"),
            ("::ffff:0:127.0.0.1", "loopback"),
            ("::ffff:0:192.168.0.1", "private (RFC 1918)"),
            ("64:ff9b::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata service)"),
            ("2002:7f00:1::", "loopback"),
            ("2002:a00:5::1", "private (RFC 1918)"),
            ("::ffff:0.0.0.0", "unspecified"),
        ] {
            assert_eq!(class(addr), Some(range), "{addr}");
        }
        // The same forms of a public address are public.
        for addr in ["::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"] {
            assert_eq!(class(addr), None, "{addr}");
        }
    }

    #[test]
    fn the_allow_list_lets_exactly_its_ranges_through() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("test address") };
        let deny = Guard::default();
        assert_eq!(
            deny.check(ip("127.0.0.1")),
            Err(Refused {
                addr: ip("127.0.0.1"),
                range: "loopback"
            })
        );
        assert_eq!(deny.check(ip("93.184.215.14")), Ok(()));
        let guard = Guard::new(vec![
            "127.0.0.0/8".parse().expect("net"),
            "::1/128".parse().expect("net"),
            "10.1.0.0/16".parse().expect("net"),
        ]);
        for allowed in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "::ffff:127.0.0.1",
            "10.1.2.3",
        ] {
            assert_eq!(guard.check(ip(allowed)), Ok(()), "{allowed}");
        }
        for refused in [
            "10.2.0.1",
            "169.254.169.254",
            "192.168.0.1",
            "::ffff:10.2.0.1",
            "fe80::1",
            "0.0.0.0",
        ] {
            assert!(guard.check(ip(refused)).is_err(), "{refused}");
        }
    }

    #[test]
    fn a_refusal_names_the_address_the_range_and_the_key() {
        let err = Guard::default()
            .check("169.254.169.254".parse().expect("addr"))
            .expect_err("metadata service");
        assert_eq!(
            err.to_string(),
            "refused to connect to 169.254.169.254: link-local (cloud metadata service) address, not allowed by delivery.allow_networks"
        );
    }

    #[test]
    fn a_refusal_hint_shows_the_lines_and_the_file_to_put_them_in() {
        let refused = Guard::default()
            .check("127.0.0.1".parse().unwrap())
            .unwrap_err();
        let hint = Guard::new(Vec::new())
            .with_source("/etc/nr.toml")
            .refusal_hint(&refused, &[]);
        assert!(hint.contains("add to /etc/nr.toml the lines `[delivery]` and `allow_networks = [\"127.0.0.0/8\"]`"), "{hint}");
        let hint = Guard::new(Vec::new())
            .with_source("<defaults: no ./config.toml>")
            .refusal_hint(&refused, &[]);
        assert!(
            hint.contains("no config file was read, so create ./config.toml"),
            "{hint}"
        );
        let hint = Guard::new(vec!["10.0.0.0/8".parse().unwrap()])
            .with_source("c.toml")
            .refusal_hint(&refused, &[]);
        assert!(
            hint.contains(
                "add \"127.0.0.0/8\" to allow_networks in the [delivery] section of c.toml"
            ),
            "{hint}"
        );
        let mapped = Guard::default()
            .check("::ffff:127.0.0.1".parse().unwrap())
            .unwrap_err();
        assert!(Guard::default()
            .refusal_hint(&mapped, &[])
            .contains("127.0.0.0/8"));
        let private = Guard::default()
            .check("10.1.2.3".parse().unwrap())
            .unwrap_err();
        assert!(Guard::default()
            .refusal_hint(&private, &[])
            .contains("10.1.2.3/32"));
        let hint = Guard::default().refusal_hint(&refused, &[]);
        assert!(
            hint.contains("the service's operator adds the lines `[delivery]`"),
            "{hint}"
        );
        let v6 = Guard::default().check("::1".parse().unwrap()).unwrap_err();
        let hint = Guard::default()
            .with_source("c.toml")
            .refusal_hint(&refused, &[v6.clone(), v6]);
        assert!(
            hint.contains("`allow_networks = [\"127.0.0.0/8\", \"::1/128\"]`"),
            "{hint}"
        );
    }
}
