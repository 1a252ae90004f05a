//! The model gateway (DESIGN §6).
