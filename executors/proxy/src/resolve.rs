//! Name resolution, asked once per request: the answer is what the policy checks and what
//! the proxy dials.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;

/// The addresses of a host name, as a future.
pub type Addresses<'a> = Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Resolves host names. The system resolver serves; tests give addresses that must never
/// be dialled, to show they are refused before any packet leaves.
pub trait Resolve: Send + Sync {
    /// Every address of `name`, in the order to try them.
    fn resolve<'a>(&'a self, name: &'a str) -> Addresses<'a>;
}

/// The operating system's resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, name: &'a str) -> Addresses<'a> {
        Box::pin(async move {
            let mut addresses: Vec<IpAddr> = tokio::net::lookup_host((name, 0))
                .await?
                .map(|a| a.ip())
                .collect();
            let mut seen = std::collections::HashSet::new();
            addresses.retain(|a| seen.insert(*a));
            Ok(addresses)
        })
    }
}
