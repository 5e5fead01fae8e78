//! matrix (placeholder: being written).
