//! Live monitoring, pure: the per-pair communication matrix fed by real traffic
//! (`matrix`), the detectors of congestion and stragglers with their hysteresis
//! (`detect`), and the flight recorder's records with the analysis that lines ranks'
//! dumps up (`flight`), and peers' health judged from heartbeats (`health`). The runtime feeds them samples with the times it read; nothing
//! here does I/O, reads a clock or draws an unseeded random number.

pub mod detect;
pub mod flight;
pub mod health;
pub mod matrix;
