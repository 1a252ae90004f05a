//! The host a client asks for, in one canonical form however it was written.
//!
//! A filter that compares the text of a host is bypassed by another spelling of the same
//! address: `2130706433`, `0177.0.0.1`, `0x7f.1` and `127.1` are all 127.0.0.1 to a URL
//! parser (WHATWG's IPv4 parser, which browsers, curl and most HTTP libraries follow),
//! `１２７．０．０．１` becomes it under IDNA mapping, and `[::ffff:127.0.0.1]` reaches it
//! over IPv6. So every host goes through a URL parser's own host parser (the `url` crate's,
//! which follows WHATWG's URL Standard), and an IPv6 address that embeds an IPv4 one
//! (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`) is reduced to that IPv4 address,
//! before any rule sees it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, ParseError};

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
    /// Parses a host as a URL parser does ([`url::Host::parse`], WHATWG's host parser):
    /// percent-decoding, `[IPv6]`, IDNA mapping (which turns full-width digits and
    /// ideographic full stops into ASCII), the IPv4 number forms (decimal, octal, hex, fewer
    /// than four parts), a trailing dot, any case. Then the address is made canonical and
    /// the name checked as a host name, without its trailing dot.
    ///
    /// # Errors
    ///
    /// [`DestinationError`] for an empty host, a bad IPv6 literal, a host that ends in a
    /// number but is no IPv4 address, or an invalid name.
    pub fn parse(host: &str) -> Result<Destination, DestinationError> {
        let parsed = Host::parse(host).map_err(|e| {
            error(match e {
                ParseError::EmptyHost => "empty host".to_owned(),
                ParseError::InvalidIpv6Address => {
                    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                        Some(inside) => format!("`{inside}` is not an IPv6 address"),
                        None => format!("`{host}` has an unclosed `[`"),
                    }
                }
                ParseError::InvalidIpv4Address => {
                    format!("`{host}` ends in a number but is not an IPv4 address")
                }
                _ if host.contains(':') => {
                    format!("`{host}` is not a host: IPv6 addresses are written in brackets")
                }
                _ => format!("`{host}` is not a valid host name"),
            })
        })?;
        match parsed {
            Host::Ipv4(ip) => Ok(Destination::Ip(IpAddr::V4(ip))),
            Host::Ipv6(ip) => Ok(Destination::Ip(canonical(IpAddr::V6(ip)))),
            Host::Domain(name) => aistack_spec::values::normalize_hostname(&name)
                .map(Destination::Name)
                .map_err(|e| error(format!("`{host}`: {}", e.reason))),
        }
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

    /// What a URL parser refuses is refused, though it could be read as a host: a client
    /// that follows WHATWG never sends it.
    #[test]
    fn hosts_a_url_parser_refuses_are_errors() {
        for bad in ["xn--a.com", "%5B::1%5D", "[::%41]"] {
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
