//! The plan walker: runs a plan's steps against a [`Host`].
