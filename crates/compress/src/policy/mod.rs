//! The adaptive policy (placeholder: being written).
