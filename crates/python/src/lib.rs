//! `topoccl._topoccl`: the Python binding of the runtime. A `Communicator` made from the
//! launcher's environment runs every collective on buffers (numpy arrays, bytearrays,
//! memoryviews) in place in memory, with the GIL released while it waits; failures raise
//! `TopocclError`, whose `culprits` lists the ranks the runtime blames.
//!
//! This is the thin I/O shell around `topoccl::Communicator`: it converts buffers and
//! errors, and decides nothing.

mod buffer;

use std::sync::Mutex;

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use topoccl::{DType, ReduceOp};

use buffer::{Buffer, Raw};

create_exception!(
    _topoccl,
    TopocclError,
    PyRuntimeError,
    "A collective, or creating a communicator, failed; `culprits` lists the ranks blamed."
);

/// Runs `$body` with `$T` the Rust type of `$dtype`.
macro_rules! typed {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            DType::F16 => {
                type $T = half::f16;
                $body
            }
            DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            DType::I32 => {
                type $T = i32;
                $body
            }
            DType::I64 => {
                type $T = i64;
                $body
            }
            DType::U8 => {
                type $T = u8;
                $body
            }
        }
    };
}

fn error(py: Python<'_>, e: topoccl::Error) -> PyErr {
    let err = TopocclError::new_err(e.to_string());
    let culprits: Vec<u32> = e.culprits();
    if let Err(set) = err.value(py).setattr("culprits", culprits) {
        return set;
    }
    err
}

fn op_of(op: &str) -> PyResult<ReduceOp> {
    op.parse::<ReduceOp>()
        .map_err(|e| PyValueError::new_err(format!("op={op:?}: {e}")))
}

fn same_type(a: &Buffer, b: &Buffer) -> PyResult<()> {
    if a.dtype != b.dtype {
        return Err(PyValueError::new_err(format!(
            "input is {} but output is {}; give both the same type",
            a.dtype, b.dtype
        )));
    }
    Ok(())
}

/// A communicator over the ranks of a job.
#[pyclass(module = "topoccl")]
struct Communicator {
    inner: Mutex<topoccl::Communicator>,
    /// Aborts calls in flight without waiting for the lock they hold.
    handle: topoccl::AbortHandle,
    rank: u32,
    world: u32,
}

impl Communicator {
    /// Runs `f` on the communicator with the GIL released.
    fn call<F>(&self, py: Python<'_>, f: F) -> PyResult<()>
    where
        F: FnOnce(&mut topoccl::Communicator) -> topoccl::Result<()> + Send,
    {
        let result = py.allow_threads(|| {
            let mut c = self
                .inner
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut c)
        });
        result.map_err(|e| error(py, e))
    }

    /// `f(input, output)` on two buffers of one type (`output` writable).
    fn two<F>(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        f: F,
    ) -> PyResult<()>
    where
        F: FnOnce(&mut topoccl::Communicator, Raw, Raw) -> topoccl::Result<()> + Send,
    {
        let i = Buffer::get(input, false, "input")?;
        let o = Buffer::get(output, true, "output")?;
        same_type(&i, &o)?;
        let (ri, ro) = (i.raw(), o.raw());
        self.call(py, move |c| f(c, ri, ro))
    }

    /// `f(buf)` on one writable buffer.
    fn one<F>(&self, py: Python<'_>, buf: &Bound<'_, PyAny>, what: &str, f: F) -> PyResult<()>
    where
        F: FnOnce(&mut topoccl::Communicator, Raw) -> topoccl::Result<()> + Send,
    {
        let b = Buffer::get(buf, true, what)?;
        let r = b.raw();
        self.call(py, move |c| f(c, r))
    }
}

// SAFETY of the `slice`/`slice_mut` calls below: each `Raw` comes from a `Buffer` that
// `two`/`one` hold until the call returns, input and output are distinct Raws of distinct
// buffers (an aliasing pair would be two Python objects exporting one memory, which the
// runtime reads and writes as it would any two slices), and `typed!` matched `T` to the
// buffer's type.
#[pymethods]
impl Communicator {
    /// The communicator of this process's rank, from the launcher's environment
    /// (`topoccl run`, torchrun, mpirun, Slurm) and the `TOPOCCL_*` settings.
    #[staticmethod]
    fn from_env(py: Python<'_>) -> PyResult<Communicator> {
        let c = py
            .allow_threads(topoccl::Communicator::from_env)
            .map_err(|e| error(py, e))?;
        Ok(Communicator {
            rank: c.rank(),
            world: c.world(),
            handle: c.abort_handle(),
            inner: Mutex::new(c),
        })
    }

    #[getter]
    fn rank(&self) -> u32 {
        self.rank
    }

    #[getter]
    fn world(&self) -> u32 {
        self.world
    }

    /// `output = op over ranks of input`; without `output`, in place on `input`.
    #[pyo3(signature = (input, output=None, op="sum"))]
    fn all_reduce(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: Option<&Bound<'_, PyAny>>,
        op: &str,
    ) -> PyResult<()> {
        let op = op_of(op)?;
        match output {
            None => self.one(py, input, "input", move |c, b| {
                typed!(b.dtype, T => c.all_reduce_in_place(unsafe { b.slice_mut::<T>() }, op))
            }),
            Some(output) => self.two(py, input, output, move |c, i, o| {
                typed!(i.dtype, T => c.all_reduce(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }, op))
            }),
        }
    }

    /// `buf` on every rank becomes `root`'s.
    #[pyo3(signature = (buf, root=0))]
    fn broadcast(&self, py: Python<'_>, buf: &Bound<'_, PyAny>, root: u32) -> PyResult<()> {
        self.one(
            py,
            buf,
            "buf",
            move |c, b| typed!(b.dtype, T => c.broadcast(unsafe { b.slice_mut::<T>() }, root)),
        )
    }

    /// `output` on `root` = op over ranks of `input` (other ranks' `output`, of any size, is
    /// not touched); without `output`, in place.
    #[pyo3(signature = (input, output=None, root=0, op="sum"))]
    fn reduce(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: Option<&Bound<'_, PyAny>>,
        root: u32,
        op: &str,
    ) -> PyResult<()> {
        let op = op_of(op)?;
        match output {
            None => self.one(py, input, "input", move |c, b| {
                typed!(b.dtype, T => c.reduce_in_place(unsafe { b.slice_mut::<T>() }, op, root))
            }),
            Some(output) => self.two(py, input, output, move |c, i, o| {
                let o = o.only_on(c.rank() == root);
                typed!(i.dtype, T => c.reduce(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }, op, root))
            }),
        }
    }

    /// Every rank's `input`, in rank order, into every rank's `output` (world × input).
    fn all_gather(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.two(py, input, output, |c, i, o| {
            typed!(i.dtype, T => c.all_gather(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }))
        })
    }

    /// Block r of op over ranks of `input` (world × output) into rank r's `output`.
    #[pyo3(signature = (input, output, op="sum"))]
    fn reduce_scatter(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        op: &str,
    ) -> PyResult<()> {
        let op = op_of(op)?;
        self.two(py, input, output, move |c, i, o| {
            typed!(i.dtype, T => c.reduce_scatter(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }, op))
        })
    }

    /// Every rank's `input` into `root`'s `output` (world × input; other ranks' `output`,
    /// of any size, is not touched).
    #[pyo3(signature = (input, output, root=0))]
    fn gather(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        root: u32,
    ) -> PyResult<()> {
        self.two(py, input, output, move |c, i, o| {
            let o = o.only_on(c.rank() == root);
            typed!(i.dtype, T => c.gather(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }, root))
        })
    }

    /// Block r of `root`'s `input` (world × output) into rank r's `output` (other ranks'
    /// `input`, of any size, is not read).
    #[pyo3(signature = (input, output, root=0))]
    fn scatter(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        root: u32,
    ) -> PyResult<()> {
        self.two(py, input, output, move |c, i, o| {
            let i = i.only_on(c.rank() == root);
            typed!(i.dtype, T => c.scatter(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }, root))
        })
    }

    /// Block j of rank i's `input` into block i of rank j's `output`.
    fn all_to_all(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.two(py, input, output, |c, i, o| {
            typed!(i.dtype, T => c.all_to_all(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }))
        })
    }

    /// Returns once every rank has entered it.
    fn barrier(&self, py: Python<'_>) -> PyResult<()> {
        self.call(py, |c| c.barrier())
    }

    /// Sends `buf` to rank `peer` (which calls `recv` with a buffer of the same size).
    fn send(&self, py: Python<'_>, buf: &Bound<'_, PyAny>, peer: u32) -> PyResult<()> {
        let b = Buffer::get(buf, false, "buf")?;
        let r = b.raw();
        self.call(
            py,
            move |c| typed!(r.dtype, T => c.send(unsafe { r.slice::<T>() }, peer)),
        )
    }

    /// Receives into `buf` what rank `peer` sends.
    fn recv(&self, py: Python<'_>, buf: &Bound<'_, PyAny>, peer: u32) -> PyResult<()> {
        self.one(
            py,
            buf,
            "buf",
            move |c, b| typed!(b.dtype, T => c.recv(unsafe { b.slice_mut::<T>() }, peer)),
        )
    }

    /// Ends the communicator: calls in flight on any rank fail, naming this one.
    #[pyo3(signature = (reason="aborted from Python"))]
    fn abort(&self, reason: &str) {
        match self.inner.try_lock() {
            Ok(mut c) => c.abort(reason),
            // A call in flight holds the communicator: it ends through the handle.
            Err(_) => self.handle.abort(),
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<topoccl.Communicator rank {} of {}>",
            self.rank, self.world
        )
    }
}

#[pymodule]
fn _topoccl(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Communicator>()?;
    m.add("TopocclError", m.py().get_type::<TopocclError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
