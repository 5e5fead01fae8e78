//! `topoccl._topoccl`: the Python binding of the runtime. A `Communicator` (made from the
//! launcher's environment, or from a torch.distributed store) runs every collective on
//! CPU torch tensors and buffers (numpy arrays, bytearrays, memoryviews) in place in
//! memory, with the GIL released while it waits, blocking or with `async_op=True` (a
//! `Work` handle); failures raise `TopocclError`, whose `culprits` lists the ranks the
//! runtime blames; Ctrl-C aborts a call in flight.
//!
//! This is the thin I/O shell around `topoccl::Communicator`: it converts buffers, stores
//! and errors, and decides nothing.
//!
//! | module | owns |
//! |---|---|
//! | `buffer` | Python memory as typed slices |
//! | `work` | where calls run: this thread, or the progress thread behind a `Work` |
//! | `finish` | what a queued call leaves for Python, run with the GIL off the progress thread |
//! | `interrupt` | Ctrl-C aborting calls in flight |
//! | `store` | a torch.distributed store as the runtime's rendezvous store |

mod buffer;
mod compression;
mod finish;
mod interrupt;
mod store;
mod work;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use topoccl::store::StoreAddr;
use topoccl::{CountMatrix, DType, ReduceOp};

use buffer::{Buffer, Raw, Take};
use work::{Call, Queue, Run, Shared, Work};

create_exception!(
    topoccl,
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

/// A failure to raise in Python: the runtime's message and the ranks it blames.
#[derive(Clone, Debug)]
pub struct Failure {
    message: String,
    culprits: Vec<u32>,
    /// The runtime error's kind (`topoccl::Error::kind`: `timeout`, `evicted`, …).
    kind: &'static str,
}

impl Failure {
    fn plain(message: String) -> Failure {
        Failure {
            message,
            culprits: vec![],
            kind: "other",
        }
    }

    fn to_py(&self, py: Python<'_>) -> PyErr {
        let err = TopocclError::new_err(self.message.clone());
        if let Err(set) = err.value(py).setattr("culprits", self.culprits.clone()) {
            return set;
        }
        if let Err(set) = err.value(py).setattr("kind", self.kind) {
            return set;
        }
        err
    }
}

impl From<topoccl::Error> for Failure {
    fn from(e: topoccl::Error) -> Failure {
        Failure {
            culprits: e.culprits(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

fn op_of(op: &str) -> PyResult<ReduceOp> {
    op.parse::<ReduceOp>()
        .map_err(|e| PyValueError::new_err(format!("op={op:?}: {e}")))
}

fn same_type(a: &Buffer, b: &Buffer, take: Take) -> PyResult<()> {
    let differ = match take {
        Take::Typed => a.dtype != b.dtype,
        Take::Bytes => a.type_name != b.type_name,
    };
    if differ {
        let name = |x: &Buffer| match take {
            Take::Typed => x.dtype.to_string(),
            Take::Bytes => x.type_name.clone(),
        };
        return Err(PyValueError::new_err(format!(
            "input is {} but output is {}; give both the same type",
            name(a),
            name(b)
        )));
    }
    Ok(())
}

/// A call on one writable buffer.
fn one<F>(
    what: &'static str,
    buf: &Bound<'_, PyAny>,
    name: &str,
    take: Take,
    f: F,
) -> PyResult<Call>
where
    F: FnOnce(&mut topoccl::Communicator, Raw) -> topoccl::Result<()> + Send + 'static,
{
    let b = Buffer::take(buf, true, name, take)?;
    let r = b.raw();
    Ok(Call {
        what,
        run: Box::new(move |c| f(c, r)),
        held: vec![b],
    })
}

/// A call on an input and a writable output of one type.
fn two<F>(
    what: &'static str,
    input: &Bound<'_, PyAny>,
    output: &Bound<'_, PyAny>,
    take: Take,
    f: F,
) -> PyResult<Call>
where
    F: FnOnce(&mut topoccl::Communicator, Raw, Raw) -> topoccl::Result<()> + Send + 'static,
{
    let i = Buffer::take(input, false, "input", take)?;
    let o = Buffer::take(output, true, "output", take)?;
    same_type(&i, &o, take)?;
    let (ri, ro) = (i.raw(), o.raw());
    Ok(Call {
        what,
        run: Box::new(move |c| f(c, ri, ro)),
        held: vec![i, o],
    })
}

/// Counts given per peer, as elements.
fn counts(name: &str, v: Vec<i64>, world: u32) -> PyResult<Vec<u64>> {
    if v.len() != world as usize {
        return Err(PyValueError::new_err(format!(
            "{name} has {} entries; give one per rank ({world})",
            v.len()
        )));
    }
    v.into_iter()
        .enumerate()
        .map(|(peer, n)| {
            u64::try_from(n).map_err(|_| {
                PyValueError::new_err(format!("{name}[{peer}] is {n}; counts are ≥ 0"))
            })
        })
        .collect()
}

/// A communicator over the ranks of a job.
#[pyclass(module = "topoccl", frozen)]
struct Communicator {
    shared: Arc<Shared>,
    /// Started by the first call that cannot run on the caller's thread.
    queue: OnceLock<Queue>,
    rank: u32,
    world: u32,
}

impl Communicator {
    fn new(c: topoccl::Communicator) -> Communicator {
        Communicator {
            rank: c.rank(),
            world: c.world(),
            shared: Arc::new(Shared::new(c)),
            queue: OnceLock::new(),
        }
    }

    fn queue(&self) -> PyResult<&Queue> {
        if let Some(q) = self.queue.get() {
            return Ok(q);
        }
        let q = Queue::start(self.shared.clone(), self.rank)
            .map_err(|e| TopocclError::new_err(format!("cannot start the progress thread: {e}")))?;
        // Two threads racing here both made one; the loser's thread ends with its queue.
        Ok(self.queue.get_or_init(|| q))
    }

    /// Runs `call`: blocking (on this thread when nothing is queued) or, with `async_op`,
    /// queued on the progress thread, returning its `Work`.
    fn dispatch(&self, py: Python<'_>, call: Call, async_op: bool) -> PyResult<Option<Work>> {
        interrupt::install(py);
        if !async_op && self.queue.get().is_none_or(Queue::idle) {
            let Call { what, run, held } = call;
            let shared = &self.shared;
            let result = py.allow_threads(|| shared.run(what, run));
            drop(held);
            return result.map(|()| None).map_err(|e| match py.check_signals() {
                Err(interrupted) => interrupted,
                Ok(()) => Failure::from(e).to_py(py),
            });
        }
        let work = self
            .queue()?
            .submit(call, &self.shared)
            .map_err(|f| f.to_py(py))?;
        if async_op {
            return Ok(Some(work));
        }
        work.wait_for(py, Duration::MAX)?;
        Ok(None)
    }

    /// The all-to-all-v of `input` and `output` (as bytes) with this rank's counts (in
    /// elements): the ranks first share their send counts (an all-gather), so each knows
    /// the whole matrix and checks its receive counts against it.
    fn all_to_all_v_call(
        &self,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        send: Vec<u64>,
        recv: Vec<u64>,
    ) -> PyResult<Call> {
        let i = Buffer::take(input, false, "input", Take::Bytes)?;
        let o = Buffer::take(output, true, "output", Take::Bytes)?;
        same_type(&i, &o, Take::Bytes)?;
        let item = i.item as u64;
        for (b, counts, name) in [(&i, &send, "input"), (&o, &recv, "output")] {
            let want: u64 = counts.iter().sum();
            if b.len as u64 != want * item {
                return Err(PyValueError::new_err(format!(
                    "the {name} holds {} elements but its counts add up to {want}",
                    b.len as u64 / item
                )));
            }
        }
        let (world, rank) = (self.world as usize, self.rank as usize);
        let (ri, ro) = (i.raw(), o.raw());
        let run: Run = Box::new(move |c| {
            let mut rows = vec![0i64; world * world];
            let mine: Vec<i64> = send.iter().map(|&n| n as i64).collect();
            c.all_gather(&mine, &mut rows)?;
            let rows: Vec<Vec<u64>> = rows
                .chunks(world)
                .map(|r| r.iter().map(|&n| n as u64 * item).collect())
                .collect();
            for (peer, row) in rows.iter().enumerate() {
                if row[rank] != recv[peer] * item {
                    return Err(topoccl::Error::Config(format!(
                        "all_to_all_v: rank {rank} expects {} elements from rank {peer}, which \
                         sends it {}; give matching split sizes on both ranks",
                        recv[peer],
                        row[rank] / item
                    )));
                }
            }
            let matrix = CountMatrix::from_rows(&rows)
                .map_err(|e| topoccl::Error::Config(format!("all_to_all_v: {e}")))?;
            // SAFETY: as for every call below (the buffers are held by the Call).
            c.all_to_all_v(
                unsafe { ri.slice::<u8>() },
                unsafe { ro.slice_mut::<u8>() },
                &matrix,
            )
        });
        Ok(Call {
            what: "all_to_all_v",
            run,
            held: vec![i, o],
        })
    }
}

// SAFETY of the `slice`/`slice_mut` calls below: each `Raw` comes from a `Buffer` its
// `Call` holds until the call has run, input and output are distinct Raws of distinct
// buffers (an aliasing pair would be two Python objects exporting one memory, which the
// runtime reads and writes as it would any two slices), and `T` is the buffer's type:
// `typed!` matched it for reductions, and collectives that only move data take their
// buffers as bytes (`Take::Bytes` makes every buffer u8).
#[pymethods]
impl Communicator {
    /// The communicator of this process's rank, from the launcher's environment
    /// (`topoccl run`, torchrun, mpirun, Slurm) and the `TOPOCCL_*` settings.
    #[staticmethod]
    fn from_env(py: Python<'_>) -> PyResult<Communicator> {
        let c = py
            .allow_threads(topoccl::Communicator::from_env)
            .map_err(|e| Failure::from(e).to_py(py))?;
        Ok(Communicator::new(c))
    }

    /// A communicator meeting in `store` (a torch.distributed store), as rank `rank` of
    /// `world`: the torch backend's constructor. `reach` is where the store lives
    /// (`tcp://HOST:PORT`; each rank listens on the address that reaches it), `timeout` in
    /// seconds bounds creation and each call, `local_world` is the ranks on this host.
    #[staticmethod]
    #[pyo3(signature = (store, rank, world, timeout, name, reach=None, local_world=None))]
    #[allow(clippy::too_many_arguments)]
    fn from_store(
        py: Python<'_>,
        store: PyObject,
        rank: u32,
        world: u32,
        timeout: f64,
        name: &str,
        reach: Option<&str>,
        local_world: Option<u32>,
    ) -> PyResult<Communicator> {
        if !(timeout.is_finite() && timeout > 0.0) {
            return Err(PyValueError::new_err(format!(
                "timeout={timeout}: give a number of seconds > 0"
            )));
        }
        let reach = reach
            .map(|r| r.parse::<StoreAddr>())
            .transpose()
            .map_err(|e| PyValueError::new_err(format!("reach={reach:?}: {e}")))?;
        let mut cfg = topoccl::Config::from_env().map_err(|e| Failure::from(e).to_py(py))?;
        cfg.timeout = Duration::from_secs_f64(timeout);
        cfg.init_timeout = cfg.timeout;
        let user_yield = cfg.yielding.is_some();
        cfg.fill_polling(local_world.unwrap_or(world));
        // A process group's calls overlap the training's compute (DDP all-reduces during
        // the backward pass): when the host's ranks do not fit on its cores (no spinning),
        // a waiting call sleeps at once instead of polling with yields, which takes the
        // cores the compute needs (4 ranks on 2 cores: DDP step 352 ms against 361 ms).
        if !user_yield && cfg.spin == Some(Duration::ZERO) {
            cfg.yielding = Some(Duration::ZERO);
        }
        let store: Arc<dyn topoccl::store::Store> = Arc::new(store::PyStore::new(store));
        let c = py
            .allow_threads(|| match &reach {
                Some(r) => topoccl::Communicator::with_store_reaching(
                    store, rank, world, "torch", name, cfg, r,
                ),
                None => topoccl::Communicator::with_store(store, rank, world, "torch", name, cfg),
            })
            .map_err(|e| Failure::from(e).to_py(py))?;
        Ok(Communicator::new(c))
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
    #[pyo3(signature = (input, output=None, op="sum", async_op=false))]
    fn all_reduce(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: Option<&Bound<'_, PyAny>>,
        op: &str,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let op = op_of(op)?;
        let call = match output {
            None => one(
                "all_reduce",
                input,
                "input",
                Take::Typed,
                move |c, b| typed!(b.dtype, T => c.all_reduce_in_place(unsafe { b.slice_mut::<T>() }, op)),
            )?,
            Some(output) => two(
                "all_reduce",
                input,
                output,
                Take::Typed,
                move |c, i, o| typed!(i.dtype, T => c.all_reduce(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }, op)),
            )?,
        };
        self.dispatch(py, call, async_op)
    }

    /// `buf` (float32) replaced by its sum over ranks, compressed by `compression` (its
    /// codec, error feedback for tensor or bucket `key`, statistics). Every rank must use
    /// the same codec; the first call checks it.
    #[pyo3(signature = (buf, compression, key=0, async_op=false))]
    fn all_reduce_compressed(
        &self,
        py: Python<'_>,
        buf: &Bound<'_, PyAny>,
        compression: &compression::Compression,
        key: u64,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let state = compression.state.clone();
        let call = one(
            "all_reduce_compressed",
            buf,
            "buf",
            Take::Typed,
            move |c, b| {
                let out = unsafe { b.slice_mut::<f32>() };
                let input = out.to_vec();
                let mut comp = state.compressor.lock().unwrap_or_else(|e| e.into_inner());
                let done = c.all_reduce_compressed(&mut comp, &input, out, key)?;
                state
                    .wire_bytes
                    .fetch_add(done.wire_bytes, std::sync::atomic::Ordering::Relaxed);
                state
                    .raw_bytes
                    .fetch_add(4 * input.len() as u64, std::sync::atomic::Ordering::Relaxed);
                state
                    .calls
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            },
        )?;
        if let Some(b) = call.held.first() {
            if b.dtype != DType::F32 {
                return Err(PyValueError::new_err(format!(
                    "all_reduce_compressed takes float32 buffers; this one holds {} \
                     (convert it, or all-reduce it uncompressed)",
                    b.type_name
                )));
            }
        }
        self.dispatch(py, call, async_op)
    }

    /// Each buffer of `bufs` all-reduced in place, one call after another, as one
    /// operation (one `Work` for all of them with `async_op`).
    #[pyo3(signature = (bufs, op="sum", async_op=false))]
    fn all_reduce_many(
        &self,
        py: Python<'_>,
        bufs: Vec<Bound<'_, PyAny>>,
        op: &str,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let op = op_of(op)?;
        let held = bufs
            .iter()
            .enumerate()
            .map(|(k, b)| Buffer::get(b, true, &format!("bufs[{k}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let raws: Vec<Raw> = held.iter().map(Buffer::raw).collect();
        let run: Run = Box::new(move |c| {
            for b in raws {
                typed!(b.dtype, T => c.all_reduce_in_place(unsafe { b.slice_mut::<T>() }, op))?;
            }
            Ok(())
        });
        let call = Call {
            what: "all_reduce",
            run,
            held,
        };
        self.dispatch(py, call, async_op)
    }

    /// `buf` on every rank becomes `root`'s.
    #[pyo3(signature = (buf, root=0, async_op=false))]
    fn broadcast(
        &self,
        py: Python<'_>,
        buf: &Bound<'_, PyAny>,
        root: u32,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let call = one("broadcast", buf, "buf", Take::Bytes, move |c, b| {
            c.broadcast(unsafe { b.slice_mut::<u8>() }, root)
        })?;
        self.dispatch(py, call, async_op)
    }

    /// `output` on `root` = op over ranks of `input` (other ranks' `output`, of any size, is
    /// not touched); without `output`, in place.
    #[pyo3(signature = (input, output=None, root=0, op="sum", async_op=false))]
    fn reduce(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: Option<&Bound<'_, PyAny>>,
        root: u32,
        op: &str,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let op = op_of(op)?;
        let call = match output {
            None => one(
                "reduce",
                input,
                "input",
                Take::Typed,
                move |c, b| typed!(b.dtype, T => c.reduce_in_place(unsafe { b.slice_mut::<T>() }, op, root)),
            )?,
            Some(output) => two("reduce", input, output, Take::Typed, move |c, i, o| {
                let o = o.only_on(c.rank() == root);
                typed!(i.dtype, T => c.reduce(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }, op, root))
            })?,
        };
        self.dispatch(py, call, async_op)
    }

    /// Every rank's `input`, in rank order, into every rank's `output` (world × input).
    #[pyo3(signature = (input, output, async_op=false))]
    fn all_gather(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let call = two("all_gather", input, output, Take::Bytes, |c, i, o| {
            c.all_gather(unsafe { i.slice::<u8>() }, unsafe { o.slice_mut::<u8>() })
        })?;
        self.dispatch(py, call, async_op)
    }

    /// Block r of op over ranks of `input` (world × output) into rank r's `output`.
    #[pyo3(signature = (input, output, op="sum", async_op=false))]
    fn reduce_scatter(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        op: &str,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let op = op_of(op)?;
        let call = two(
            "reduce_scatter",
            input,
            output,
            Take::Typed,
            move |c, i, o| typed!(i.dtype, T => c.reduce_scatter(unsafe { i.slice::<T>() }, unsafe { o.slice_mut::<T>() }, op)),
        )?;
        self.dispatch(py, call, async_op)
    }

    /// Every rank's `input` into `root`'s `output` (world × input; other ranks' `output`,
    /// of any size, is not touched).
    #[pyo3(signature = (input, output, root=0, async_op=false))]
    fn gather(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        root: u32,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let call = two("gather", input, output, Take::Bytes, move |c, i, o| {
            let o = o.only_on(c.rank() == root);
            c.gather(
                unsafe { i.slice::<u8>() },
                unsafe { o.slice_mut::<u8>() },
                root,
            )
        })?;
        self.dispatch(py, call, async_op)
    }

    /// Block r of `root`'s `input` (world × output) into rank r's `output` (other ranks'
    /// `input`, of any size, is not read).
    #[pyo3(signature = (input, output, root=0, async_op=false))]
    fn scatter(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        root: u32,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let call = two("scatter", input, output, Take::Bytes, move |c, i, o| {
            let i = i.only_on(c.rank() == root);
            c.scatter(
                unsafe { i.slice::<u8>() },
                unsafe { o.slice_mut::<u8>() },
                root,
            )
        })?;
        self.dispatch(py, call, async_op)
    }

    /// Block j of rank i's `input` into block i of rank j's `output`.
    #[pyo3(signature = (input, output, async_op=false))]
    fn all_to_all(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let call = two("all_to_all", input, output, Take::Bytes, |c, i, o| {
            c.all_to_all(unsafe { i.slice::<u8>() }, unsafe { o.slice_mut::<u8>() })
        })?;
        self.dispatch(py, call, async_op)
    }

    /// All-to-all with per-peer counts: `send_counts[j]` elements of `input` (blocks back
    /// to back) go to rank j, `recv_counts[i]` elements of `output` come from rank i.
    #[pyo3(signature = (input, output, send_counts, recv_counts, async_op=false))]
    fn all_to_all_v(
        &self,
        py: Python<'_>,
        input: &Bound<'_, PyAny>,
        output: &Bound<'_, PyAny>,
        send_counts: Vec<i64>,
        recv_counts: Vec<i64>,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let send = counts("send_counts", send_counts, self.world)?;
        let recv = counts("recv_counts", recv_counts, self.world)?;
        let call = self.all_to_all_v_call(input, output, send, recv)?;
        self.dispatch(py, call, async_op)
    }

    /// Returns once every rank has entered it.
    #[pyo3(signature = (async_op=false))]
    fn barrier(&self, py: Python<'_>, async_op: bool) -> PyResult<Option<Work>> {
        let call = Call {
            what: "barrier",
            run: Box::new(|c| c.barrier()),
            held: vec![],
        };
        self.dispatch(py, call, async_op)
    }

    /// Sends `buf` to rank `peer` (which calls `recv` with a buffer of the same size).
    #[pyo3(signature = (buf, peer, async_op=false))]
    fn send(
        &self,
        py: Python<'_>,
        buf: &Bound<'_, PyAny>,
        peer: u32,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let b = Buffer::take(buf, false, "buf", Take::Bytes)?;
        let r = b.raw();
        let call = Call {
            what: "send",
            run: Box::new(move |c| c.send(unsafe { r.slice::<u8>() }, peer)),
            held: vec![b],
        };
        self.dispatch(py, call, async_op)
    }

    /// Receives into `buf` what rank `peer` sends.
    #[pyo3(signature = (buf, peer, async_op=false))]
    fn recv(
        &self,
        py: Python<'_>,
        buf: &Bound<'_, PyAny>,
        peer: u32,
        async_op: bool,
    ) -> PyResult<Option<Work>> {
        let call = one("recv", buf, "buf", Take::Bytes, move |c, b| {
            c.recv(unsafe { b.slice_mut::<u8>() }, peer)
        })?;
        self.dispatch(py, call, async_op)
    }

    /// After a failure: agrees with the other survivors on the failed ranks and returns
    /// `(communicator, failed, epoch)`: a communicator of the survivors (renumbered in
    /// their old order), the failed ranks as world ranks, and the membership epoch. Every
    /// survivor must call it. Raises `TopocclError` (kind `evicted`) on a rank the others
    /// decided without: it should exit or rejoin. This communicator is revoked.
    fn shrink(&self, py: Python<'_>) -> PyResult<(Communicator, Vec<u32>, u64)> {
        let shared = &self.shared;
        let r = py.allow_threads(|| match shared.lock().as_mut() {
            Some(c) => c.shrink(),
            None => Err(topoccl::Error::CommAborted(
                "shrink: the communicator was closed".into(),
            )),
        });
        let s = r.map_err(|e| Failure::from(e).to_py(py))?;
        Ok((Communicator::new(s.comm), s.failed, s.epoch))
    }

    /// At a step boundary, on every member: admits the replacements waiting to join
    /// (`join` / `TOPOCCL_JOIN=1`); returns the grown communicator (members keep their
    /// ranks, replacements follow), or `None` when nobody waits.
    fn grow(&self, py: Python<'_>) -> PyResult<Option<Communicator>> {
        let shared = &self.shared;
        let r = py.allow_threads(|| match shared.lock().as_mut() {
            Some(c) => c.grow(),
            None => Err(topoccl::Error::CommAborted(
                "grow: the communicator was closed".into(),
            )),
        });
        Ok(r.map_err(|e| Failure::from(e).to_py(py))?
            .map(Communicator::new))
    }

    /// Links the plans avoid because a shrink found them dead with both ends alive (world
    /// ranks, lower first).
    #[getter]
    fn dead_links(&self) -> PyResult<Vec<(u32, u32)>> {
        match self.shared.try_lock() {
            Some(g) => Ok(g.as_ref().map_or_else(Vec::new, |c| c.dead_links())),
            None => Err(TopocclError::new_err(
                "dead_links: a call holds the communicator",
            )),
        }
    }

    /// The membership epoch: how many shrinks and grows led to this communicator.
    #[getter]
    fn epoch(&self) -> PyResult<u64> {
        match self.shared.try_lock() {
            Some(g) => Ok(g.as_ref().map_or(0, |c| c.epoch())),
            None => Err(TopocclError::new_err(
                "epoch: a call holds the communicator",
            )),
        }
    }

    /// This rank's number in the launcher's world (what `failed` lists name).
    #[getter]
    fn world_rank(&self) -> PyResult<u32> {
        match self.shared.try_lock() {
            Some(g) => Ok(g
                .as_ref()
                .and_then(|c| c.world_rank(c.rank()))
                .unwrap_or(self.rank)),
            None => Err(TopocclError::new_err(
                "world_rank: a call holds the communicator",
            )),
        }
    }

    /// Ends the communicator: calls in flight on any rank fail, naming this one.
    #[pyo3(signature = (reason="aborted from Python"))]
    fn abort(&self, reason: &str) {
        match self.shared.try_lock() {
            Some(mut c) => {
                if let Some(c) = c.as_mut() {
                    c.abort(reason)
                }
            }
            // A call in flight holds the communicator: it ends through the handle.
            None => self.shared.abort.abort(),
        }
    }

    /// Waits for the calls started (up to their deadlines), then ends the communicator,
    /// saying goodbye to the peers; later calls raise.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if let Some(q) = self.queue.get().filter(|q| !q.idle()) {
            let last = Call {
                what: "close",
                run: Box::new(|_| Ok(())),
                held: vec![],
            };
            let work = q.submit(last, &self.shared).map_err(|f| f.to_py(py))?;
            // The calls before it raise on their own `wait`s; closing goes on regardless.
            let _ = work.wait_for(py, Duration::MAX);
        }
        let shared = &self.shared;
        py.allow_threads(|| shared.close());
        Ok(())
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
    m.add_class::<Work>()?;
    m.add_class::<compression::Compression>()?;
    let at_exit = wrap_pyfunction!(finish::at_exit, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (at_exit,))?;
    m.add("TopocclError", m.py().get_type::<TopocclError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
