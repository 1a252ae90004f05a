//! The daemon: the runtime that keeps what `up` started.
