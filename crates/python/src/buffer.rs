//! Python buffers (numpy arrays, `bytearray`, `memoryview`, anything with the buffer
//! protocol) as typed slices for the collectives, without copying.
//!
//! A buffer must be C-contiguous, of a format topoccl has a type for, in native byte
//! order and aligned for its type; outputs must be writable. What is held is released when
//! the [`Buffer`] is dropped, so a slice made from it must not outlive it.

use std::ffi::CStr;
use std::os::raw::c_int;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::{ffi, Bound, PyAny};
use topoccl::DType;

/// A held buffer.
pub struct Buffer {
    view: Box<ffi::Py_buffer>,
    pub dtype: DType,
    /// Elements.
    pub len: usize,
}

/// A buffer's memory, to be used while the GIL is released (the [`Buffer`] it came from
/// is kept alive by the caller meanwhile).
#[derive(Clone, Copy)]
pub struct Raw {
    ptr: *mut u8,
    pub len: usize,
    pub dtype: DType,
}

// SAFETY: the memory is owned by a Python object the caller keeps held (a `Buffer`) for
// as long as the `Raw` is used; moving the address to another thread moves no ownership.
unsafe impl Send for Raw {}

impl Raw {
    /// This buffer where `used`, else an empty one (the Rust API's buffers of ranks a
    /// rooted collective does not read or write).
    pub fn only_on(self, used: bool) -> Raw {
        Raw {
            len: if used { self.len } else { 0 },
            ..self
        }
    }

    /// The elements as `T` (the caller has matched `T` to `dtype`).
    ///
    /// # Safety
    /// The `Buffer` this came from is still held, and no other slice of it is alive.
    pub unsafe fn slice<'a, T>(self) -> &'a [T] {
        std::slice::from_raw_parts(self.ptr as *const T, self.len)
    }

    /// # Safety
    /// As [`Raw::slice`], and the buffer was acquired writable.
    pub unsafe fn slice_mut<'a, T>(self) -> &'a mut [T] {
        std::slice::from_raw_parts_mut(self.ptr as *mut T, self.len)
    }
}

/// The topoccl type of a buffer format (`struct` module codes, with an optional native or
/// little-endian prefix) and item size.
fn dtype_of(format: &str, itemsize: usize) -> Result<DType, String> {
    let code = format.trim_start_matches(['@', '=', '<']);
    if code.starts_with(['>', '!']) {
        return Err(format!(
            "big-endian data ('{format}'); convert it to native byte order"
        ));
    }
    let t = match (code, itemsize) {
        ("f", 4) => DType::F32,
        ("d", 8) => DType::F64,
        ("e", 2) => DType::F16,
        ("B", 1) => DType::U8,
        ("i" | "l", 4) => DType::I32,
        ("q" | "l", 8) => DType::I64,
        _ => {
            return Err(format!(
                "a buffer of format '{format}' ({itemsize}-byte items) has no topoccl type; \
                 topoccl takes float32, float64, float16, int32, int64 and uint8 arrays \
                 (bfloat16 through torch tensors)"
            ))
        }
    };
    Ok(t)
}

impl Buffer {
    /// Holds `obj`'s buffer, writable if `writable`; `what` names it in errors.
    pub fn get(obj: &Bound<'_, PyAny>, writable: bool, what: &str) -> PyResult<Buffer> {
        let mut flags: c_int = ffi::PyBUF_C_CONTIGUOUS | ffi::PyBUF_FORMAT;
        if writable {
            flags |= ffi::PyBUF_WRITABLE;
        }
        // SAFETY: Py_buffer is plain data that PyObject_GetBuffer fills; it is boxed so its
        // address stays put until PyBuffer_Release.
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: obj is a live object and the GIL is held (we have a Bound).
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) } != 0 {
            let cause = PyErr::take(obj.py())
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(PyTypeError::new_err(format!(
                "{what} must be a C-contiguous{} array (numpy array, bytearray, memoryview): \
                 {cause}",
                if writable { ", writable" } else { "" }
            )));
        }
        let format = if view.format.is_null() {
            "B".to_string()
        } else {
            // SAFETY: with PyBUF_FORMAT the exporter gives a NUL-terminated format string
            // that lives as long as the view.
            unsafe { CStr::from_ptr(view.format) }
                .to_string_lossy()
                .into_owned()
        };
        let itemsize = view.itemsize.max(1) as usize;
        let mut held = Buffer {
            len: view.len as usize / itemsize,
            view,
            dtype: DType::U8,
        };
        let dtype = dtype_of(&format, itemsize)
            .map_err(|e| PyTypeError::new_err(format!("{what}: {e}")))?;
        if held.view.buf as usize % dtype.size() != 0 {
            return Err(PyValueError::new_err(format!(
                "{what} is not aligned for {dtype}; copy it (numpy.ascontiguousarray) first"
            )));
        }
        held.dtype = dtype;
        Ok(held)
    }

    pub fn raw(&self) -> Raw {
        Raw {
            ptr: self.view.buf as *mut u8,
            len: self.len,
            dtype: self.dtype,
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: a Buffer exists only for a view PyObject_GetBuffer filled (a failed call
        // returns before one is built). Releasing needs the GIL, which every Buffer is
        // dropped under: Buffers never cross allow_threads (their `Raw`s do).
        unsafe { ffi::PyBuffer_Release(&mut *self.view) };
    }
}
