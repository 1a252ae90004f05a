//! aistack's own listeners: the addresses no request through a proxy may reach, whatever
//! its policy says.
//!
//! A sandbox whose policy allows loopback (`127.0.0.0/8`) must still not reach the
//! gateway's administration, another policy's listener (and its credentials) or another
//! sandbox's published port; the one way from a sandbox to the gateway is the
//! `models.aistack.internal` route. The daemon adds every address it listens on here and
//! removes it when the listener stops, so the set is live: the proxies of every project
//! share one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, PoisonError, RwLock};

use crate::policy::is_blocked;

/// Tells whether an address is one of this machine's (a wildcard listener answers on it).
pub type IsLocal = fn(IpAddr) -> bool;

/// The listeners of this daemon, shared by all its proxies. Cloning shares the set.
#[derive(Clone)]
pub struct OwnListeners {
    /// How many registrations each address has (two projects may share a gateway).
    listening: Arc<RwLock<HashMap<SocketAddr, usize>>>,
    is_local: IsLocal,
}

impl Default for OwnListeners {
    fn default() -> Self {
        OwnListeners::new()
    }
}

impl std::fmt::Debug for OwnListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let listening = self
            .listening
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        f.debug_set().entries(listening.keys()).finish()
    }
}

/// One registration; the address leaves the set when the last one is dropped.
#[must_use = "the address leaves the set when this is dropped"]
pub struct Listening {
    owner: OwnListeners,
    address: SocketAddr,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let mut listening = (self.owner.listening.write()).unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = listening.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                listening.remove(&self.address);
            }
        }
    }
}

impl OwnListeners {
    /// An empty set that asks the kernel whether an address is this machine's.
    #[must_use]
    pub fn new() -> OwnListeners {
        OwnListeners {
            listening: Arc::default(),
            is_local: is_this_machine,
        }
    }

    /// The same set, asking `is_local` instead of the kernel (tests: no socket is opened).
    #[must_use]
    pub fn with_is_local(mut self, is_local: IsLocal) -> OwnListeners {
        self.is_local = is_local;
        self
    }

    /// Adds `address` (a port of 0 is never added: nothing listens there) until the
    /// returned registration is dropped.
    pub fn add(&self, address: SocketAddr) -> Listening {
        let mut listening = self
            .listening
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        *listening.entry(address).or_default() += 1;
        Listening {
            owner: self.clone(),
            address,
        }
    }

    /// Whether dialling `address:port` may reach one of the listeners: the same address;
    /// for a listener on `0.0.0.0` or `::`, any address this machine answers on (loopback,
    /// every address of the built-in block list, and its own addresses); and for the
    /// unspecified address, which Linux dials as loopback, any listener on the port.
    #[must_use]
    pub fn covers(&self, address: IpAddr, port: u16) -> bool {
        let listening = self
            .listening
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut wildcard = false;
        for listener in listening.keys().filter(|l| l.port() == port) {
            let ip = crate::destination::canonical(listener.ip());
            if ip == address || address.is_unspecified() {
                return true;
            }
            wildcard |= ip.is_unspecified();
        }
        drop(listening);
        wildcard && (address.is_loopback() || is_blocked(address) || (self.is_local)(address))
    }
}

/// Whether `address` is assigned to this machine: only then can a socket be bound to it
/// (without `IP_FREEBIND`, which this socket does not set).
fn is_this_machine(address: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(address, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_address_is_covered_while_a_registration_lasts() {
        let own = OwnListeners::new().with_is_local(|_| false);
        let first = own.add(at("127.0.0.1:12434"));
        let second = own.add(at("127.0.0.1:12434"));
        assert!(own.covers(ip("127.0.0.1"), 12434));
        assert!(
            !own.covers(ip("127.0.0.2"), 12434),
            "another loopback address"
        );
        assert!(!own.covers(ip("127.0.0.1"), 12435), "another port");
        assert!(own.covers(ip("0.0.0.0"), 12434), "dialled as loopback");
        drop(first);
        assert!(own.covers(ip("127.0.0.1"), 12434), "shared by two");
        drop(second);
        assert!(!own.covers(ip("127.0.0.1"), 12434));
        assert!(format!("{own:?}") == "{}");
    }

    #[test]
    fn a_wildcard_listener_covers_loopback_blocked_and_local_addresses() {
        let own = OwnListeners::new().with_is_local(|a| a == ip("203.0.113.9"));
        let _published = own.add(at("0.0.0.0:8080"));
        let _v6 = own.add(at("[::]:9090"));
        for address in ["127.0.0.5", "10.1.2.3", "192.168.1.1", "203.0.113.9", "::1"] {
            assert!(own.covers(ip(address), 8080), "{address}");
            assert!(own.covers(ip(address), 9090), "{address}");
        }
        assert!(!own.covers(ip("203.0.113.10"), 8080), "not this machine's");
        assert!(!own.covers(ip("127.0.0.1"), 8081));
    }

    #[test]
    fn the_kernel_knows_loopback_is_this_machines() {
        assert!(is_this_machine(ip("127.0.0.1")));
        assert!(!is_this_machine(ip("192.0.2.1")), "TEST-NET-1 is no host's");
    }
}
