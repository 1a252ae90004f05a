//! Whether a destination may be reached under a network policy.
//!
//! The order of the checks is the contract (DESIGN §7):
//!
//! 1. A deny rule that matches the name, or any address it resolved to, denies: deny beats
//!    allow.
//! 2. An address where aistack itself listens (a gateway, a proxy, a published port:
//!    [`OwnListeners`]) denies, whatever the rules say.
//! 3. Every address is checked against the built-in block list (loopback, private,
//!    link-local, CGNAT, unique-local, unspecified; IPv6 forms of IPv4 addresses are
//!    unwrapped first). A blocked address is allowed only by an IP or CIDR allow rule that
//!    covers it and lies inside the blocked range it falls in — never by a host rule, so
//!    `allow: [example.com]` cannot reach 127.0.0.1 when `example.com` resolves there, and
//!    never by a rule wider than the range (`0.0.0.0/0`, `::/0`, `64.0.0.0/2`), which says
//!    "the internet", not "this machine". One blocked address denies the whole request: a
//!    name that answers with a public and a private address is not trusted with either.
//! 4. An allow rule matching the name, or matching every address, allows; else the policy's
//!    default decides.
//!
//! The verdict names the rule that decided and the one address to dial, so the proxy
//! connects to exactly what was checked.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use aistack_spec::model::NetworkPolicy;
use aistack_spec::values::{HostRule, PolicyDefault, RuleTarget};
use ipnet::IpNet;

use crate::destination::{Destination, canonical};
use crate::own::OwnListeners;

/// The ranges no destination reaches unless an IP or CIDR rule allows it.
pub const BLOCKED: [&str; 11] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "::/128",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
];

/// Allowed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The request goes through.
    Allow,
    /// The proxy answers 403.
    Deny,
}

/// What decided, for the client's 403 body and the network log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// An allow rule, as written.
    Allow(String),
    /// A deny rule, as written.
    Deny(String),
    /// A built-in blocked range, and the address in it.
    Blocked {
        /// The range, one of [`BLOCKED`].
        range: IpNet,
        /// The address in it: one the name resolved to, or the one named; an IPv4 address in IPv6
        /// form is unwrapped first.
        address: IpAddr,
    },
    /// aistack's own listener at the address and port, which no rule opens.
    Own {
        /// The address dialled (one the name resolved to, or the one named).
        address: IpAddr,
        /// The port.
        port: u16,
    },
    /// The policy's default.
    Default(PolicyDefault),
    /// The name resolved to nothing.
    Unresolved,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Allow(rule) => write!(f, "allow {rule}"),
            Reason::Deny(rule) => write!(f, "deny {rule}"),
            Reason::Blocked { range, address } => {
                write!(f, "block list {range} ({address})")
            }
            Reason::Own { address, port } => {
                write!(f, "aistack listener {}", SocketAddr::new(*address, *port))
            }
            Reason::Default(default) => write!(f, "default {default}"),
            Reason::Unresolved => f.write_str("no address"),
        }
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed or not.
    pub decision: Decision,
    /// Why.
    pub reason: Reason,
    /// The address to dial when allowed: the first checked one.
    pub address: Option<IpAddr>,
}

/// A network policy, ready to decide.
#[derive(Debug, Clone)]
pub struct Policy {
    default: PolicyDefault,
    allow: Vec<HostRule>,
    deny: Vec<HostRule>,
    blocked: Vec<IpNet>,
}

impl Policy {
    /// The policy of the file.
    #[must_use]
    pub fn new(policy: &NetworkPolicy) -> Self {
        Policy {
            default: policy.default,
            allow: policy.allow.clone(),
            deny: policy.deny.clone(),
            blocked: BLOCKED_NETS.clone(),
        }
    }

    /// Decides for a request to `destination` on `port`, never allowing an address of
    /// `own`. A name is resolved with `resolve` at most once, and not at all when a deny
    /// rule names it; the verdict's address is one of that one answer, so what is dialled
    /// is what was checked (no DNS-rebinding window).
    pub fn check(
        &self,
        destination: &Destination,
        port: u16,
        own: &OwnListeners,
        resolve: impl FnOnce(&str) -> Vec<IpAddr>,
    ) -> Verdict {
        match destination {
            Destination::Ip(ip) => self.decide(None, &[canonical(*ip)], port, own),
            Destination::Name(name) => {
                if let Some(verdict) = self.deny_by_name(name, port) {
                    return verdict;
                }
                let addresses: Vec<IpAddr> = resolve(name).into_iter().map(canonical).collect();
                self.decide(Some(name), &addresses, port, own)
            }
        }
    }

    /// The verdict of a deny rule that names `name` on `port`, decided before resolving: a
    /// denied name is never looked up. [`Policy::check`] asks the same first.
    #[must_use]
    pub fn deny_by_name(&self, name: &str, port: u16) -> Option<Verdict> {
        (self.deny.iter().find(|r| name_matches(r, name, port)))
            .map(|rule| deny(Reason::Deny(rule.to_string())))
    }

    fn decide(
        &self,
        name: Option<&str>,
        addresses: &[IpAddr],
        port: u16,
        own: &OwnListeners,
    ) -> Verdict {
        if addresses.is_empty() {
            return deny(Reason::Unresolved);
        }
        let mut ip_allows = Vec::with_capacity(addresses.len());
        for &address in addresses {
            if let Some(rule) = self.deny.iter().find(|r| ip_matches(r, address, port)) {
                return deny(Reason::Deny(rule.to_string()));
            }
            if own.covers(address, port) {
                return deny(Reason::Own { address, port });
            }
            let blocked = self.blocked.iter().find(|n| n.contains(&address));
            let allow = (self.allow.iter())
                .find(|r| ip_matches(r, address, port) && blocked.is_none_or(|b| within(r, b)));
            if allow.is_none()
                && let Some(range) = blocked
            {
                return deny(Reason::Blocked {
                    range: *range,
                    address,
                });
            }
            ip_allows.push(allow);
        }
        let by_name = name.and_then(|n| self.allow.iter().find(|r| name_matches(r, n, port)));
        let by_address = ip_allows.iter().all(Option::is_some).then(|| ip_allows[0]);
        let reason = match (by_name, by_address.flatten()) {
            (Some(rule), _) | (None, Some(rule)) => Reason::Allow(rule.to_string()),
            (None, None) => Reason::Default(self.default),
        };
        let decision = match (&reason, self.default) {
            (Reason::Allow(_), _) | (Reason::Default(_), PolicyDefault::Allow) => Decision::Allow,
            _ => Decision::Deny,
        };
        Verdict {
            decision,
            reason,
            address: (decision == Decision::Allow).then(|| addresses[0]),
        }
    }
}

fn deny(reason: Reason) -> Verdict {
    Verdict {
        decision: Decision::Deny,
        reason,
        address: None,
    }
}

fn port_matches(rule: &HostRule, port: u16) -> bool {
    rule.port.is_none_or(|p| p == port)
}

/// Whether `rule` names host `name` on `port` (host and wildcard rules only).
pub(crate) fn name_matches(rule: &HostRule, name: &str, port: u16) -> bool {
    port_matches(rule, port) && rule.matches_host(name)
}

/// Whether `address` is on the built-in block list.
pub(crate) fn is_blocked(address: IpAddr) -> bool {
    let address = canonical(address);
    BLOCKED_NETS.iter().any(|net| net.contains(&address))
}

/// [`BLOCKED`], parsed once.
static BLOCKED_NETS: std::sync::LazyLock<Vec<IpNet>> = std::sync::LazyLock::new(|| {
    BLOCKED
        .iter()
        .map(|r| r.parse().expect("the block list parses"))
        .collect()
});

/// Whether an IP or CIDR rule lies inside the blocked `range`, so that it may open it: a
/// rule names a blocked address only by naming that range or a part of it.
fn within(rule: &HostRule, range: &IpNet) -> bool {
    match &rule.target {
        RuleTarget::Ip(ip) => range.contains(&canonical(*ip)),
        RuleTarget::Cidr(net) => range.contains(net),
        RuleTarget::Host(_) | RuleTarget::Wildcard(_) => false,
    }
}

fn ip_matches(rule: &HostRule, address: IpAddr, port: u16) -> bool {
    port_matches(rule, port)
        && match &rule.target {
            RuleTarget::Ip(ip) => canonical(*ip) == address,
            RuleTarget::Cidr(net) => net.contains(&address),
            RuleTarget::Host(_) | RuleTarget::Wildcard(_) => false,
        }
}
