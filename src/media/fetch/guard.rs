//! Guards for URL media: which hosts a fetch may name and which addresses it may reach.
//!
//! An event's URL is attacker-controlled input, so a fetch must never become a way to reach the
//! worker's own network (metadata services, admin ports, cluster-internal hosts). Two checks
//! stand in the way: the host allowlist (by name, before anything is resolved) and the address
//! check, which the resolver below applies to every address a name resolves to; the connector
//! then dials exactly the addresses that were vetted, so nothing can change between the check
//! and the connect.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Host;

/// IPv4 ranges that are not globally reachable unicast (IANA special-purpose registry), with the
/// name used in error messages.
const V4_BLOCKED: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" (0.0.0.0/8)"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private (10.0.0.0/8)"),
    (Ipv4Addr::new(100, 64, 0, 0), 10, "carrier-grade NAT (100.64.0.0/10)"),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback (127.0.0.0/8)"),
    (Ipv4Addr::new(169, 254, 0, 0), 16, "link-local (169.254.0.0/16)"),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private (172.16.0.0/12)"),
    (Ipv4Addr::new(192, 0, 0, 0), 24, "IETF protocol assignments (192.0.0.0/24)"),
    (Ipv4Addr::new(192, 0, 2, 0), 24, "documentation (192.0.2.0/24)"),
    (Ipv4Addr::new(192, 88, 99, 0), 24, "6to4 relay anycast (192.88.99.0/24)"),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private (192.168.0.0/16)"),
    (Ipv4Addr::new(198, 18, 0, 0), 15, "benchmarking (198.18.0.0/15)"),
    (Ipv4Addr::new(198, 51, 100, 0), 24, "documentation (198.51.100.0/24)"),
    (Ipv4Addr::new(203, 0, 113, 0), 24, "documentation (203.0.113.0/24)"),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast (224.0.0.0/4)"),
    (Ipv4Addr::new(255, 255, 255, 255), 32, "broadcast (255.255.255.255)"),
    (Ipv4Addr::new(240, 0, 0, 0), 4, "reserved (240.0.0.0/4)"),
];

/// IPv6 ranges refused outright. Forms that embed an IPv4 address (mapped, compatible, NAT64)
/// are judged by that address instead, see [`embedded_v4`].
const V6_BLOCKED: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified (::)"),
    (Ipv6Addr::LOCALHOST, 128, "loopback (::1)"),
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48, "local-use NAT64 (64:ff9b:1::/48)"),
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64, "discard-only (100::/64)"),
    // Includes Teredo (2001::/32), whose embedded IPv4 address is obfuscated.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23, "IETF protocol assignments (2001::/23)"),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, "documentation (2001:db8::/32)"),
    // 6to4 is deprecated (RFC 7526) and would hand the destination to whichever relay is nearest.
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16, "6to4 (2002::/16)"),
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20, "documentation (3fff::/20)"),
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7, "unique local (fc00::/7)"),
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local (fe80::/10)"),
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10, "site-local (fec0::/10)"),
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast (ff00::/8)"),
];

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
    u128::from(ip) & mask == u128::from(net) & mask
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) or
/// NAT64 (`64:ff9b::a.b.c.d`) address: each of these reaches that IPv4 host.
fn embedded_v4(ip: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let low = Ipv4Addr::from((u128::from(ip) & 0xffff_ffff) as u32);
    if in_v6(ip, Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96) {
        Some((low, "IPv4-mapped"))
    } else if in_v6(ip, Ipv6Addr::UNSPECIFIED, 96) && ip != Ipv6Addr::UNSPECIFIED && ip != Ipv6Addr::LOCALHOST {
        Some((low, "IPv4-compatible"))
    } else if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        Some((low, "NAT64"))
    } else {
        None
    }
}

/// Why `ip` may not be fetched from, or `None` when it is a globally reachable unicast address.
pub fn non_public_reason(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => {
            V4_BLOCKED.iter().find(|(net, len, _)| in_v4(v4, *net, *len)).map(|(_, _, why)| (*why).to_string())
        }
        IpAddr::V6(v6) => {
            if let Some((v4, form)) = embedded_v4(v6) {
                return non_public_reason(IpAddr::V4(v4)).map(|why| format!("{form} form of {v4}, {why}"));
            }
            if let Some((_, _, why)) = V6_BLOCKED.iter().find(|(net, len, _)| in_v6(v6, *net, *len)) {
                return Some((*why).to_string());
            }
            // Only 2000::/3 is allocated for global unicast; anything else is reserved.
            if !in_v6(v6, Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3) {
                return Some("not global unicast (outside 2000::/3)".to_string());
            }
            None
        }
    }
}

pub fn is_public(ip: IpAddr) -> bool {
    non_public_reason(ip).is_none()
}

/// Hosts URL media may name: exact names or IP literals, and `*.domain` wildcards that match
/// any name ending in `.domain` (not `domain` itself). Names compare case-insensitively, after
/// the same IDNA normalisation the URL parser applies, ignoring a trailing dot.
#[derive(Debug, Clone, Default)]
pub struct HostAllowlist {
    names: Vec<String>,
    ips: Vec<IpAddr>,
    /// Each with its leading dot, so a match always falls on a label boundary.
    suffixes: Vec<String>,
}

impl HostAllowlist {
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let mut list = HostAllowlist::default();
        for entry in entries {
            let entry = entry.trim();
            let (wildcard, bare) = match entry.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, entry),
            };
            let bare = bare.strip_suffix('.').unwrap_or(bare);
            // Bare IPv6 ("::1") as well as the URL form ("[::1]").
            if let (false, Ok(ip)) = (wildcard, bare.parse::<IpAddr>()) {
                list.ips.push(ip);
                continue;
            }
            let host = Host::parse(bare).map_err(|e| format!("allow_hosts entry {entry:?} is not a host ({e})"))?;
            match (wildcard, host) {
                (false, Host::Domain(d)) => list.names.push(d.to_ascii_lowercase()),
                (true, Host::Domain(d)) => list.suffixes.push(format!(".{}", d.to_ascii_lowercase())),
                (false, Host::Ipv4(ip)) => list.ips.push(IpAddr::V4(ip)),
                (false, Host::Ipv6(ip)) => list.ips.push(IpAddr::V6(ip)),
                (true, _) => return Err(format!("allow_hosts entry {entry:?}: a wildcard needs a domain name")),
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.ips.is_empty() && self.suffixes.is_empty()
    }

    pub fn allows(&self, host: &Host<&str>) -> bool {
        match host {
            Host::Domain(d) => {
                let d = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
                self.names.contains(&d) || self.suffixes.iter().any(|s| d.len() > s.len() && d.ends_with(s.as_str()))
            }
            Host::Ipv4(ip) => self.ips.contains(&IpAddr::V4(*ip)),
            Host::Ipv6(ip) => self.ips.contains(&IpAddr::V6(*ip)),
        }
    }
}

/// The resolver refused a name because one of its addresses is not public. Kept as a type so
/// the fetcher can find it in reqwest's error chain and report a guard refusal, not a network error.
#[derive(Debug)]
pub struct AddressRefused {
    pub host: String,
    pub addr: IpAddr,
    pub why: String,
}

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "host {} resolves to {}, which is {}", self.host, self.addr, self.why)
    }
}

impl std::error::Error for AddressRefused {}

/// Resolves with the system resolver and refuses the whole name if ANY address is non-public:
/// refusing only the bad ones would still let a name that mixes public and internal addresses
/// be used to probe the internal ones whenever the public one fails.
#[derive(Debug, Clone, Copy)]
pub struct VettingResolver {
    pub allow_private: bool,
}

impl Resolve for VettingResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("host {host} has no addresses").into());
            }
            if !allow_private {
                for addr in &addrs {
                    if let Some(why) = non_public_reason(addr.ip()) {
                        return Err(Box::new(AddressRefused { host, addr: addr.ip(), why }) as _);
                    }
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_table() {
        let table: &[(&str, bool)] = &[
            // public
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("93.184.216.34", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("192.167.255.255", true),
            ("192.169.0.0", true),
            ("169.253.255.255", true),
            ("223.255.255.255", true),
            ("2606:4700:4700::1111", true),
            ("2a00:1450:4001:80b::200e", true),
            ("::ffff:8.8.8.8", true),
            ("64:ff9b::808:808", true),
            // IPv4 non-public
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("10.255.255.255", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            // IPv6 non-public
            ("::", false),
            ("::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.1.2.3", false),
            ("::ffff:169.254.169.254", false),
            ("::127.0.0.1", false),
            ("::10.0.0.1", false),
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("64:ff9b:1::1", false),
            ("100::1", false),
            ("2001::1", false),
            ("2001:db8::1", false),
            ("2002:7f00:1::1", false),
            ("3fff::1", false),
            ("fc00::1", false),
            ("fd12:3456:789a::1", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("::ffff:0:7f00:1", false),
            ("4000::1", false),
        ];
        for (addr, public) in table {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(is_public(ip), *public, "{addr}: {:?}", non_public_reason(ip));
        }
    }

    #[test]
    fn embedded_forms_name_their_ipv4() {
        let why = non_public_reason("::ffff:127.0.0.1".parse().unwrap()).unwrap();
        assert!(why.contains("IPv4-mapped") && why.contains("127.0.0.1") && why.contains("loopback"), "{why}");
        let why = non_public_reason("64:ff9b::a9fe:a9fe".parse().unwrap()).unwrap();
        assert!(why.contains("NAT64") && why.contains("link-local"), "{why}");
    }

    fn allow(entries: &[&str]) -> HostAllowlist {
        HostAllowlist::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn url_allowed(list: &HostAllowlist, url: &str) -> bool {
        let url = url::Url::parse(url).unwrap();
        list.allows(&url.host().unwrap())
    }

    #[test]
    fn allowlist_matching() {
        let list =
            allow(&["media.example", "*.cdn.example.com.", "IMG.Example.org", "93.184.216.34", "[2606:4700::1]"]);
        let cases: &[(&str, bool)] = &[
            ("https://media.example/a.jpg", true),
            ("https://MEDIA.example./a.jpg", true),
            ("https://x.media.example/a.jpg", false),
            ("https://media.example.evil/a.jpg", false),
            ("https://img.example.org/", true),
            ("https://a.cdn.example.com/", true),
            ("https://a.b.cdn.example.com./", true),
            ("https://A.CDN.Example.COM/", true),
            ("https://cdn.example.com/", false),
            ("https://evilcdn.example.com/", false),
            ("https://cdn.example.com.evil/", false),
            ("https://93.184.216.34/", true),
            ("https://1572395042/", true),
            ("https://93.184.216.35/", false),
            ("https://[2606:4700:0::1]/", true),
            ("https://[2606:4700::2]/", false),
        ];
        for (url, ok) in cases {
            assert_eq!(url_allowed(&list, url), *ok, "{url}");
        }
    }

    #[test]
    fn allowlist_normalises_idna() {
        let list = allow(&["*.bücher.example"]);
        assert!(url_allowed(&list, "https://www.xn--bcher-kva.example/"));
        assert!(url_allowed(&list, "https://www.BÜCHER.example/"));
    }

    #[test]
    fn allowlist_rejects_bad_entries() {
        assert!(HostAllowlist::new(&["*.10.0.0.1".to_string()]).is_err());
        assert!(HostAllowlist::new(&["exa mple.com".to_string()]).is_err());
        assert!(allow(&[]).is_empty());
    }
}
