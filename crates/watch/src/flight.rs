//! flight (placeholder: being written).
