//! Sandboxes: the guest agent protocol (`protocol`), what the agent does to enter a
//! namespace sandbox (`setup`), the system calls both need (`sys`, the crate's only
//! `unsafe`), the seccomp filter (`seccomp`), user-namespace id maps (`idmap`), cgroup
//! limits (`cgroup`), template root filesystems (`rootfs`), and, with the `host` feature,
//! the host's side: the backends, the agent client and image layers.

#![warn(missing_docs)]

pub mod boot;
pub mod cgroup;
pub mod guest;
pub mod idmap;
pub mod isolation;
pub mod jail;
pub mod protocol;
pub mod rootfs;
pub mod seccomp;
pub mod setup;
pub mod sys;

#[cfg(feature = "host")]
pub mod backend;
#[cfg(feature = "host")]
pub mod client;
#[cfg(feature = "host")]
pub mod layers;
#[cfg(feature = "host")]
pub mod microvm;
#[cfg(feature = "host")]
pub mod namespace;
