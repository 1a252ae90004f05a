//! The network-policy proxy (DESIGN §7): what stands between an agent and the network.
//!
//! [`destination`] turns the host a client names (in a request line, a `Host` header or a
//! CONNECT target) into one canonical form, however it was spelled, and [`policy`] decides
//! whether a destination may be reached, given the addresses it resolved to; neither does
//! I/O. The server resolves a name once, hands every address to [`policy::Policy::check`],
//! and dials the address the verdict names.

pub mod authority;
mod body;
pub mod config;
pub mod destination;
mod exchange;
pub mod netlog;
pub mod policy;
pub mod resolve;
pub mod server;
mod tunnel;

pub use config::{Config, Limits};
pub use destination::{Destination, DestinationError};
pub use policy::{Decision, Policy, Verdict};
pub use server::{Proxy, Settings};
