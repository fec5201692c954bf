//! The conformance suite every storage driver must pass (skeleton).
