//! `topoccl.Compression`: a codec with its state across calls (error feedback, PowerSGD's
//! warm start, the step that seeds shared randomness) and its statistics, for
//! `Communicator.all_reduce_compressed` (the DDP hook in `topoccl.torch.hooks` keeps one).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use topoccl::compressed::Compressor;

/// What the progress thread shares with Python.
pub struct State {
    pub compressor: Mutex<Compressor>,
    pub wire_bytes: AtomicU64,
    pub raw_bytes: AtomicU64,
    pub calls: AtomicU64,
}

/// A codec and its state: `Compression("int8")`, `Compression("rp:0.02")`,
/// `Compression("powersgd:4", feedback=True)`.
#[pyclass(module = "topoccl", frozen)]
pub struct Compression {
    pub state: Arc<State>,
    codec: String,
}

#[pymethods]
impl Compression {
    /// `codec` as the CLI spells it (fp16, bf16, int8, int4, 1bit, topk:R, randk:R, rp:R,
    /// powersgd:RANK); `feedback` keeps error feedback (1-bit always has it); `decay`
    /// is the share of the residual carried to the next step.
    #[new]
    #[pyo3(signature = (codec, feedback=true, decay=0.8))]
    fn new(codec: &str, feedback: bool, decay: f32) -> PyResult<Compression> {
        let mut c =
            Compressor::new(codec, feedback).map_err(|e| PyValueError::new_err(e.to_string()))?;
        c.set_decay(decay)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(Compression {
            codec: c.spec().to_string(),
            state: Arc::new(State {
                compressor: Mutex::new(c),
                wire_bytes: AtomicU64::new(0),
                raw_bytes: AtomicU64::new(0),
                calls: AtomicU64::new(0),
            }),
        })
    }

    /// The codec, as it prints.
    #[getter]
    fn codec(&self) -> String {
        self.codec.clone()
    }

    /// Bytes this rank put on the wire in all compressed calls so far.
    #[getter]
    fn wire_bytes(&self) -> u64 {
        self.state.wire_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the same calls would have moved uncompressed (4 per element).
    #[getter]
    fn raw_bytes(&self) -> u64 {
        self.state.raw_bytes.load(Ordering::Relaxed)
    }

    /// Compressed calls so far.
    #[getter]
    fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::Relaxed)
    }

    fn __repr__(&self) -> String {
        format!(
            "Compression({:?}, calls={}, wire_bytes={}, raw_bytes={})",
            self.codec,
            self.calls(),
            self.wire_bytes(),
            self.raw_bytes()
        )
    }
}
