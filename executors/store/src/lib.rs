//! The content-addressed model store.
