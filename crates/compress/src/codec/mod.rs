//! Codecs (placeholder: being written).
