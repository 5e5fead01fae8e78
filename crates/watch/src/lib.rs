//! Detectors (placeholder: being written).
