//! The network-policy proxy (DESIGN §7): what stands between an agent and the network.
//!
//! This crate holds the pure core so far: [`destination`] turns the host a client names
//! (in a request line, a `Host` header or a CONNECT target) into one canonical form, however
//! it was spelled, and [`policy`] decides whether a destination may be reached, given the
//! addresses it resolved to. Neither does I/O: the proxy server resolves a name once, hands
//! every address to [`policy::Policy::decide`], and dials the address the verdict names.

pub mod destination;
pub mod policy;

pub use destination::{Destination, DestinationError};
pub use policy::{Decision, Policy, Verdict};
