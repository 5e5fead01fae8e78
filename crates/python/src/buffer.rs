//! Python buffers as typed slices for the collectives, without copying: CPU torch tensors
//! (through their data pointer: bfloat16 has no buffer format) and anything with the
//! buffer protocol (numpy arrays, `bytearray`, `memoryview`).
//!
//! A buffer must be C-contiguous, of a type topoccl has (float32, float64, float16,
//! bfloat16, int32, int64, uint8), in native byte order and aligned for its type; outputs
//! must be writable. What is held is released when the [`Buffer`] is dropped (under the
//! GIL), so a slice made from it must not outlive it.

use std::ffi::CStr;
use std::os::raw::c_int;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::{ffi, Bound, PyAny};
use topoccl::DType;

/// A held buffer.
pub struct Buffer {
    hold: Hold,
    ptr: *mut u8,
    pub dtype: DType,
    /// Elements.
    pub len: usize,
    /// The bytes of one of the caller's elements (`dtype`'s size, unless taken as bytes).
    pub item: usize,
    /// The caller's type (torch dtype or buffer format), for messages.
    pub type_name: String,
}

/// How a collective reads a buffer's elements.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// As a type topoccl reduces (reductions).
    Typed,
    /// As bytes, whatever the type (collectives that only move data).
    Bytes,
}

/// What keeps a buffer's memory alive.
enum Hold {
    /// A buffer-protocol view, released with `PyBuffer_Release`.
    View(Box<ffi::Py_buffer>),
    /// A reference to a torch tensor (its storage lives as long as the tensor).
    Tensor(#[allow(dead_code)] Py<PyAny>),
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
        if self.len == 0 {
            // An empty tensor's data pointer may be null, which no slice may hold.
            return &[];
        }
        std::slice::from_raw_parts(self.ptr as *const T, self.len)
    }

    /// # Safety
    /// As [`Raw::slice`], and the buffer was acquired writable.
    pub unsafe fn slice_mut<'a, T>(self) -> &'a mut [T] {
        if self.len == 0 {
            return &mut [];
        }
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
                 topoccl takes {TYPES} arrays (bfloat16 through torch tensors)"
            ))
        }
    };
    Ok(t)
}

/// The types topoccl reduces, for messages.
const TYPES: &str = "float32, float64, float16, bfloat16, int32, int64 and uint8";

/// The topoccl type of a torch dtype (`str(tensor.dtype)`).
fn dtype_of_torch(name: &str) -> Option<DType> {
    Some(match name {
        "torch.float32" => DType::F32,
        "torch.float64" => DType::F64,
        "torch.float16" => DType::F16,
        "torch.bfloat16" => DType::BF16,
        "torch.int32" => DType::I32,
        "torch.int64" => DType::I64,
        "torch.uint8" => DType::U8,
        _ => return None,
    })
}

/// Whether `obj` is a torch tensor (or a subclass: parameters), told without importing
/// torch.
fn is_tensor(obj: &Bound<'_, PyAny>) -> bool {
    obj.hasattr("data_ptr").unwrap_or(false) && obj.hasattr("__torch_function__").unwrap_or(false)
}

impl Buffer {
    /// Holds `obj`'s memory, writable if `writable`, typed; `what` names it in errors.
    pub fn get(obj: &Bound<'_, PyAny>, writable: bool, what: &str) -> PyResult<Buffer> {
        Self::take(obj, writable, what, Take::Typed)
    }

    /// Holds `obj`'s memory as `take` says.
    pub fn take(
        obj: &Bound<'_, PyAny>,
        writable: bool,
        what: &str,
        take: Take,
    ) -> PyResult<Buffer> {
        let b = if is_tensor(obj) {
            Self::tensor(obj, what, take)?
        } else {
            Self::view(obj, writable, what, take)?
        };
        Ok(b)
    }

    /// This buffer as bytes (`dtype` u8, `len` its size in bytes).
    fn into_bytes(mut self) -> Buffer {
        self.len *= self.item;
        self.dtype = DType::U8;
        self
    }

    /// A CPU torch tensor's memory, by its data pointer.
    fn tensor(t: &Bound<'_, PyAny>, what: &str, take: Take) -> PyResult<Buffer> {
        let device: String = t.getattr("device")?.getattr("type")?.extract()?;
        if device != "cpu" {
            return Err(PyTypeError::new_err(format!(
                "{what} is a {device} tensor; topoccl runs on CPU tensors: move it to the CPU \
                 (tensor.cpu()) or use the nccl backend for GPU tensors"
            )));
        }
        let layout = t.getattr("layout")?.str()?.to_string();
        if layout != "torch.strided" {
            return Err(PyTypeError::new_err(format!(
                "{what} is a {layout} tensor; topoccl takes dense tensors (tensor.to_dense())"
            )));
        }
        let name = t.getattr("dtype")?.str()?.to_string();
        let item: usize = t.call_method0("element_size")?.extract()?;
        let dtype = match (dtype_of_torch(&name), take) {
            (Some(d), _) => d,
            (None, Take::Bytes) => DType::U8,
            (None, Take::Typed) => {
                return Err(PyTypeError::new_err(format!(
                    "{what} is a {name} tensor, which topoccl cannot reduce; it reduces {TYPES} \
                     tensors (convert with tensor.to(...))"
                )))
            }
        };
        if !t.call_method0("is_contiguous")?.extract::<bool>()? {
            return Err(PyValueError::new_err(format!(
                "{what} is not contiguous; pass tensor.contiguous() (and copy the result back \
                 if it is an output)"
            )));
        }
        let len: usize = t.call_method0("numel")?.extract()?;
        let ptr: usize = t.call_method0("data_ptr")?.extract()?;
        if ptr % dtype.size() != 0 {
            return Err(PyValueError::new_err(format!(
                "{what} is not aligned for {dtype}; pass tensor.clone() first"
            )));
        }
        let b = Buffer {
            hold: Hold::Tensor(t.clone().unbind()),
            ptr: ptr as *mut u8,
            dtype,
            len,
            item,
            type_name: name,
        };
        Ok(if take == Take::Bytes {
            b.into_bytes()
        } else {
            b
        })
    }

    /// A buffer-protocol object's memory.
    fn view(obj: &Bound<'_, PyAny>, writable: bool, what: &str, take: Take) -> PyResult<Buffer> {
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
                "{what} must be a CPU torch tensor or a C-contiguous{} array (numpy array, \
                 bytearray, memoryview): {cause}",
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
            ptr: view.buf as *mut u8,
            hold: Hold::View(view),
            dtype: DType::U8,
            item: itemsize,
            type_name: format!("'{format}'"),
        };
        if take == Take::Bytes {
            return Ok(held.into_bytes());
        }
        let dtype = dtype_of(&format, itemsize)
            .map_err(|e| PyTypeError::new_err(format!("{what}: {e}")))?;
        if held.ptr as usize % dtype.size() != 0 {
            return Err(PyValueError::new_err(format!(
                "{what} is not aligned for {dtype}; copy it (numpy.ascontiguousarray) first"
            )));
        }
        held.dtype = dtype;
        Ok(held)
    }

    pub fn raw(&self) -> Raw {
        Raw {
            ptr: self.ptr,
            len: self.len,
            dtype: self.dtype,
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if let Hold::View(view) = &mut self.hold {
            // SAFETY: a View exists only for a view PyObject_GetBuffer filled (a failed
            // call returns before one is built). Releasing needs the GIL: taken here (a
            // no-op where it is held), since a queued call's buffers are let go on the
            // progress thread.
            Python::with_gil(|_| unsafe { ffi::PyBuffer_Release(&mut **view) });
        }
    }
}

// SAFETY: a Buffer is only read (its pointer and type) off the thread that made it, and
// what it holds is released under the GIL (`Drop`; pyo3 defers a `Py` drop to the GIL).
unsafe impl Send for Buffer {}
