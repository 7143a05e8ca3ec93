//! Address allow-lists (`devices[].allow_from`, `adt.allow_from`).
//!
//! Owns: parsing `"10.1.2.3"`, `"10.1.0.0/16"`, `"::1"` or `"fd00::/8"` and matching a peer
//! address against them. Pure, no I/O. Guarantees: an empty list allows every address (the
//! setting is optional); an IPv4 peer seen through an IPv6 socket (`::ffff:10.1.2.3`) matches
//! the IPv4 entries; an IPv4 entry never matches an IPv6 address and the reverse.

use std::fmt;
use std::net::IpAddr;

/// One address or CIDR range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` bits of `a` and `b` are equal.
fn prefix_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let full = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..full] != b[..full] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xFFu8 << (8 - rest);
    (a[full] & mask) == (b[full] & mask)
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("'{s}' is not an IP address or CIDR range like 10.1.0.0/16 or fd00::/8")
        })?;
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => return Err(format!("'{s}': the prefix length must be 0-{max}")),
            },
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The addresses a sender may connect from; empty = any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(Vec<IpNet>);

impl AllowList {
    /// Parses every entry; the error lists `(index, message)` of each bad entry.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, Vec<(usize, String)>> {
        let mut nets = Vec::with_capacity(entries.len());
        let mut bad = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match e.as_ref().parse() {
                Ok(n) => nets.push(n),
                Err(m) => bad.push((i, m)),
            }
        }
        if bad.is_empty() {
            Ok(AllowList(nets))
        } else {
            Err(bad)
        }
    }

    /// Whether a peer at `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("any address");
        }
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

impl serde::Serialize for AllowList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn list(entries: &[&str]) -> AllowList {
        AllowList::parse(entries).unwrap()
    }

    #[test]
    fn empty_allows_any() {
        let l = list(&[]);
        assert!(l.allows(ip("10.0.0.1")) && l.allows(ip("::1")));
        assert_eq!(l.to_string(), "any address");
    }

    #[test]
    fn single_addresses_match_exactly() {
        let l = list(&["10.1.2.3", "::1"]);
        assert!(l.allows(ip("10.1.2.3")));
        assert!(!l.allows(ip("10.1.2.4")));
        assert!(l.allows(ip("::1")));
        assert!(!l.allows(ip("::2")));
        assert!(!l.allows(ip("127.0.0.1")), "::1 is not 127.0.0.1");
    }

    #[test]
    fn ranges_match_their_prefix() {
        let l = list(&["10.1.0.0/16", "192.168.7.128/25", "fd00::/8"]);
        assert!(l.allows(ip("10.1.255.7")));
        assert!(!l.allows(ip("10.2.0.1")));
        assert!(l.allows(ip("192.168.7.200")));
        assert!(!l.allows(ip("192.168.7.127")));
        assert!(l.allows(ip("fdab::17")));
        assert!(!l.allows(ip("fe80::1")));
        // Host bits set in the entry are ignored, as in `ip route`.
        assert!(list(&["10.1.2.3/16"]).allows(ip("10.1.9.9")));
        // /0 is every address of its family only.
        let all4 = list(&["0.0.0.0/0"]);
        assert!(all4.allows(ip("8.8.8.8")) && !all4.allows(ip("::1")));
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_entries() {
        let l = list(&["10.1.0.0/16"]);
        assert!(l.allows(ip("::ffff:10.1.2.3")));
        assert!(!l.allows(ip("::ffff:10.2.2.3")));
        assert!(list(&["::ffff:10.1.2.3"]).allows(ip("10.1.2.3")));
    }

    #[test]
    fn bad_entries_are_reported_with_their_index() {
        let err = AllowList::parse(&[
            "10.0.0.1",
            "10.0.0.0/33",
            "host.example",
            "::/129",
            "1.2.3.4/x",
        ])
        .unwrap_err();
        let idx: Vec<usize> = err.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, [1, 2, 3, 4]);
        assert!(err[0].1.contains("0-32"), "{}", err[0].1);
        assert!(err[1].1.contains("not an IP address"), "{}", err[1].1);
        assert!(err[2].1.contains("0-128"), "{}", err[2].1);
    }

    #[test]
    fn displays_as_cidr() {
        assert_eq!(
            list(&["10.1.2.3", "10.1.0.0/16", "::1"]).to_string(),
            "10.1.2.3/32, 10.1.0.0/16, ::1/128"
        );
    }
}
