//! The network-policy proxy (DESIGN §7): what stands between an agent and the network.
//!
//! The pure core: [`destination`] turns the host a client names (in a request line, a
//! `Host` header or a CONNECT target) into one canonical form, however it was spelled;
//! [`policy`] decides whether a destination may be reached, given the addresses it resolved
//! to; [`config`] is one listener's view of a network policy. Around it, [`server`] runs a
//! proxy: it resolves a name once ([`resolve`]), hands every address to the policy,
//! never dials aistack's own listeners ([`own`]), dials only addresses it checked,
//! intercepts TLS for hosts with credentials with the project's CA ([`authority`]), and
//! records every decision in the [`netlog`]. Its TCP listener serves only its own user's
//! processes ([`peer`]); its accept loops outlive passing failures ([`accept`]).

#![warn(missing_docs)]

pub mod accept;
pub mod authority;
mod body;
pub mod config;
pub mod destination;
mod exchange;
pub mod netlog;
pub mod own;
pub mod peer;
pub mod policy;
pub mod resolve;
pub mod server;
mod tunnel;

pub use config::{Config, Limits, Route};
pub use destination::{Destination, DestinationError};
pub use own::OwnListeners;
pub use policy::{Decision, Policy, Verdict};
/// What [`Settings::upstream_tls`] holds, for callers that keep one without naming rustls.
pub use rustls::ClientConfig;
pub use server::{Entrance, Proxy, Settings};
