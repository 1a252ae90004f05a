//! What a listener enforces (the policy, swapped whole on a `~` change) and the limits it
//! runs under (fixed for its lifetime).

use std::net::SocketAddr;
use std::time::Duration;

use aistack_spec::model::{Credential, NetworkPolicy};
use aistack_spec::values::HostRule;

use crate::destination::Destination;
use crate::policy::{Policy, name_matches};

/// A network policy as one listener enforces it.
#[derive(Debug, Clone)]
pub struct Config {
    /// Who the listener serves, for the network log: the policy's name (a sandbox's, later).
    pub source: String,
    /// The allow/deny decision.
    pub policy: Policy,
    /// Hosts tunnelled without interception, so without credentials.
    pub bypass: Vec<HostRule>,
    /// Headers set on requests to a host, by canonical host.
    pub credentials: Vec<(Destination, Credential)>,
    /// Names the proxy serves itself, whatever the policy says.
    pub routes: Vec<Route>,
}

/// A name the proxy sends to a fixed address of its own choosing, never resolved and not
/// decided by the policy: `models.aistack.internal` is the gateway, with the sandbox's
/// models named in a header.
#[derive(Debug, Clone)]
pub struct Route {
    /// The name clients use, canonical (lower case).
    pub host: String,
    /// Where requests to it go.
    pub address: SocketAddr,
    /// Headers set on every request, replacing any the client sent.
    pub headers: Vec<(String, String)>,
}

impl Config {
    /// The listener's view of `policy`.
    #[must_use]
    pub fn new(source: &str, policy: &NetworkPolicy) -> Config {
        let credentials = (policy.credentials.iter())
            .filter_map(|c| Some((Destination::parse(&c.host).ok()?, c.clone())))
            .collect();
        Config {
            source: source.to_owned(),
            policy: Policy::new(policy),
            bypass: policy.bypass.clone(),
            credentials,
            routes: Vec::new(),
        }
    }

    /// The credential for requests to `destination`, if it has one.
    #[must_use]
    pub fn credential(&self, destination: &Destination) -> Option<&Credential> {
        (self.credentials.iter())
            .find(|(host, _)| host == destination)
            .map(|(_, c)| c)
    }

    /// The route of `destination`, if the proxy serves that name itself.
    #[must_use]
    pub fn route(&self, destination: &Destination) -> Option<&Route> {
        match destination {
            Destination::Name(name) => self.routes.iter().find(|r| r.host == *name),
            Destination::Ip(_) => None,
        }
    }

    /// Whether CONNECT to `destination:port` is intercepted for credential injection:
    /// the host has a credential and no `bypass` rule names it.
    #[must_use]
    pub fn intercepts(&self, destination: &Destination, port: u16) -> bool {
        let bypassed = match destination {
            Destination::Name(name) => self.bypass.iter().any(|r| name_matches(r, name, port)),
            Destination::Ip(_) => false,
        };
        !bypassed && self.credential(destination).is_some()
    }
}

/// Sizes and timeouts that keep one client from holding the proxy.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line plus headers, in bytes (hyper's read buffer, at least 8 KiB).
    pub max_head_bytes: usize,
    /// The longest request target, in bytes.
    pub max_uri_bytes: usize,
    /// From the first byte of a request (or the end of the previous response) to the end
    /// of its headers; closes slow and idle keep-alive clients alike.
    pub header_timeout: Duration,
    /// A tunnel or upgraded connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Dialling one upstream address.
    pub connect_timeout: Duration,
}

impl Limits {
    /// The head limit in force: hyper's read buffer cannot be smaller than 8 KiB.
    #[must_use]
    pub fn head_bytes(&self) -> usize {
        self.max_head_bytes.max(8192)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
        }
    }
}
