//! Manifest parsing and validation (skeleton).
