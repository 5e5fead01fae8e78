//! Gradient compression, pure: codecs with error feedback (`codec`) and the adaptive
//! policy that decides when and how hard to compress, with its safety breaker (`policy`).
//! Nothing here does I/O, reads a clock or draws an unseeded random number.

pub mod codec;
pub mod policy;
