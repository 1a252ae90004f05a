//! The KVM microVM monitor (DESIGN §7). It holds, so far, the guest timing probe that
//! `isolation: auto` runs (`probe`); the system calls it needs are in `sys`, the crate's
//! only `unsafe`.

#![warn(missing_docs)]

pub mod probe;
mod sys;
