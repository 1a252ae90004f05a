//! The host a client asks for, in one canonical form however it was written.
//!
//! A filter that compares the text of a host is bypassed by another spelling of the same
//! address: `2130706433`, `0177.0.0.1`, `0x7f.1` and `127.1` are all 127.0.0.1 to a URL
//! parser (WHATWG's IPv4 parser, which browsers, curl and most HTTP libraries follow),
//! `１２７．０．０．１` becomes it under IDNA mapping, and `[::ffff:127.0.0.1]` reaches it
//! over IPv6. So every host is parsed here exactly as a URL parser would, and an IPv6
//! address that embeds an IPv4 one (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`) is
//! reduced to that IPv4 address, before any rule sees it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Where a request goes: an address, or a name still to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A literal address, canonical (embedded IPv4 addresses unwrapped).
    Ip(IpAddr),
    /// A host name: lower-case ASCII (IDNA), no trailing dot.
    Name(String),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Destination::Ip(ip) => write!(f, "{ip}"),
            Destination::Name(name) => f.write_str(name),
        }
    }
}

/// A destination host or authority that is not well formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationError {
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for DestinationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for DestinationError {}

fn error(reason: impl Into<String>) -> DestinationError {
    DestinationError {
        reason: reason.into(),
    }
}

/// An address as rules see it: an IPv6 address embedding an IPv4 one is that IPv4 address.
#[must_use]
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// The IPv4 address in an IPv4-mapped (`::ffff:a.b.c.d`) or IPv4-compatible (`::a.b.c.d`)
/// address. `::` and `::1` stay IPv6: they are the unspecified and loopback addresses.
fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let compatible = s[..6].iter().all(|&x| x == 0) && u128::from(ip) > 1;
    compatible.then(|| Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8))
}

impl Destination {
    /// Parses a host as a URL parser does: percent-decoding, `[IPv6]`, IDNA mapping (which
    /// turns full-width digits and ideographic full stops into ASCII), the IPv4 number forms
    /// (decimal, octal, hex, fewer than four parts), a trailing dot, any case.
    ///
    /// # Errors
    ///
    /// [`DestinationError`] for an empty host, a bad escape, a bad IPv6 literal, a host
    /// that ends in a number but is no IPv4 address, or an invalid name.
    pub fn parse(host: &str) -> Result<Destination, DestinationError> {
        let host = percent_decode(host)?;
        if host.is_empty() {
            return Err(error("empty host"));
        }
        if let Some(inside) = host.strip_prefix('[') {
            let inside = inside
                .strip_suffix(']')
                .ok_or_else(|| error(format!("`{host}` has an unclosed `[`")))?;
            let ip: Ipv6Addr = inside
                .parse()
                .map_err(|_| error(format!("`{inside}` is not an IPv6 address")))?;
            return Ok(Destination::Ip(canonical(IpAddr::V6(ip))));
        }
        if host.contains(':') {
            return Err(error(format!(
                "`{host}` is not a host: IPv6 addresses are written in brackets"
            )));
        }
        let ascii = if host.is_ascii() {
            host.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(&host)
                .map_err(|_| error(format!("`{host}` is not a valid international host name")))?
        };
        if ends_in_a_number(&ascii) {
            return ipv4(&ascii).map(|ip| Destination::Ip(IpAddr::V4(ip)));
        }
        aistack_spec::values::normalize_hostname(&ascii)
            .map(Destination::Name)
            .map_err(|e| error(format!("`{host}`: {}", e.reason)))
    }

    /// Parses an authority, `[userinfo@]host[:port]`; the userinfo is dropped (it is no part
    /// of where a request goes). Without a port, `default_port` applies; none means the port
    /// is required, as for CONNECT.
    ///
    /// # Errors
    ///
    /// [`DestinationError`] for a bad host or port, or a missing required port.
    pub fn parse_authority(
        authority: &str,
        default_port: Option<u16>,
    ) -> Result<(Destination, u16), DestinationError> {
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if hostport.starts_with('[') {
            match hostport.rsplit_once("]:") {
                Some((host, port)) => (&hostport[..=host.len()], Some(port)),
                None => (hostport, None),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        let port = match port {
            Some(text) => match text.parse::<u16>() {
                Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
                _ => return Err(error(format!("`{text}` is not a port"))),
            },
            None => default_port.ok_or_else(|| error(format!("`{authority}` names no port")))?,
        };
        Ok((Destination::parse(host)?, port))
    }

    /// Parses an absolute URI's destination (`http://host:port/path`), the form of a
    /// request line to a forward proxy; the scheme gives the default port.
    ///
    /// # Errors
    ///
    /// [`DestinationError`] for a scheme other than http, https, ws and wss, or a bad
    /// authority.
    pub fn parse_uri(uri: &str) -> Result<(Destination, u16), DestinationError> {
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| error(format!("`{uri}` is not an absolute URI")))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            other => return Err(error(format!("scheme `{other}` is not proxied"))),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        Destination::parse_authority(&rest[..end], Some(default_port))
    }
}

fn percent_decode(text: &str) -> Result<String, DestinationError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| error(format!("`{text}` has a bad `%` escape")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| error(format!("`{text}` decodes to invalid UTF-8")))
}

/// The dot-separated labels of `host`, one trailing dot ignored.
fn labels(host: &str) -> Vec<&str> {
    let mut labels: Vec<&str> = host.split('.').collect();
    if labels.len() > 1 && labels.last() == Some(&"") {
        labels.pop();
    }
    labels
}

/// WHATWG's "ends in a number": the last label (ignoring one trailing dot) is decimal
/// digits or `0x` hex, so the whole host must parse as IPv4.
fn ends_in_a_number(host: &str) -> bool {
    let last = labels(host).last().copied().unwrap_or_default();
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x")
        .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// WHATWG's IPv4 parser: one to four parts, each decimal, octal (leading `0`) or hex
/// (`0x`); every part but the last is one byte, the last fills the remaining bytes.
fn ipv4(host: &str) -> Result<Ipv4Addr, DestinationError> {
    let invalid = || {
        error(format!(
            "`{host}` ends in a number but is not an IPv4 address"
        ))
    };
    let parts = labels(host);
    if parts.len() > 4 {
        return Err(invalid());
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (*part, 10)
        };
        let n = match (digits, radix) {
            ("", 16) => 0,
            ("", _) => return Err(invalid()),
            _ => u64::from_str_radix(digits, radix).map_err(|_| invalid())?,
        };
        numbers.push(n);
    }
    let (last, rest) = numbers.split_last().ok_or_else(invalid)?;
    if rest.iter().any(|&n| n > 255) {
        return Err(invalid());
    }
    let room = 8 * (5 - numbers.len() as u32);
    if *last >= 1u64 << room {
        return Err(invalid());
    }
    let value = rest
        .iter()
        .enumerate()
        .fold(*last, |acc, (i, &n)| acc + (n << (8 * (3 - i as u32))));
    Ok(Ipv4Addr::from(u32::try_from(value).map_err(|_| invalid())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Destination {
        Destination::Ip(text.parse().unwrap())
    }

    #[test]
    fn ipv4_number_forms_are_one_address() {
        for form in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "0x7f.0.0.1",
            "127.1",
            "127.0.1",
            "0x7F.1",
            "127.0.0.1.",
            "%31%32%37.0.0.1",
            "１２７．０．０．１",
            "017700000001",
        ] {
            assert_eq!(Destination::parse(form), Ok(ip("127.0.0.1")), "{form}");
        }
        assert_eq!(Destination::parse("0"), Ok(ip("0.0.0.0")));
        assert_eq!(Destination::parse("0x"), Ok(ip("0.0.0.0")));
    }

    #[test]
    fn embedded_ipv4_in_ipv6_is_unwrapped() {
        for form in [
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[::127.0.0.1]",
            "[0:0:0:0:0:ffff:7f00:0001]",
        ] {
            assert_eq!(Destination::parse(form), Ok(ip("127.0.0.1")), "{form}");
        }
        assert_eq!(Destination::parse("[::1]"), Ok(ip("::1")));
        assert_eq!(Destination::parse("[::]"), Ok(ip("::")));
    }

    #[test]
    fn names_are_lower_case_ascii_without_a_trailing_dot() {
        let name = |s: &str| Ok(Destination::Name(s.to_owned()));
        assert_eq!(
            Destination::parse("API.Example.COM."),
            name("api.example.com")
        );
        assert_eq!(
            Destination::parse("bücher.example"),
            name("xn--bcher-kva.example")
        );
        assert_eq!(
            Destination::parse("1.2.3.4.example"),
            name("1.2.3.4.example")
        );
    }

    #[test]
    fn malformed_hosts_are_errors() {
        for bad in [
            "",
            "256.0.0.1",
            "1.2.3.4.5",
            "0x100000000",
            "08.0.0.1",
            "[::1",
            "::1",
            "a b",
            "%zz",
            "[fe80::1%eth0]",
            "1.2.3.256",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn authorities_drop_userinfo_and_take_ports() {
        assert_eq!(
            Destination::parse_uri("http://allowed.com@127.0.0.1/x"),
            Ok((ip("127.0.0.1"), 80))
        );
        assert_eq!(
            Destination::parse_uri("https://[::ffff:10.0.0.1]:8443/"),
            Ok((ip("10.0.0.1"), 8443))
        );
        assert_eq!(
            Destination::parse_authority("example.com:443", None),
            Ok((Destination::Name("example.com".into()), 443))
        );
        assert!(Destination::parse_authority("example.com", None).is_err());
        assert!(Destination::parse_authority("example.com:0", None).is_err());
        assert!(Destination::parse_authority("example.com:+80", None).is_err());
        assert!(Destination::parse_uri("ftp://example.com/").is_err());
    }
}
