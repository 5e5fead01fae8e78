//! detect (placeholder: being written).
