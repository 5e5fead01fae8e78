//! Nonblocking collectives: start an operation, keep computing, then `test` or `wait`.
//!
//! [`Communicator::into_async`] moves the communicator onto a progress thread of its own
//! that runs queued operations one after another, in the order they were started (all
//! ranks must start the same operations in the same order, as with blocking calls). Each
//! start returns a [`Work`] handle at once; the operation's bytes move while the caller
//! computes — the overlap a training loop wants between gradient all-reduce and the
//! backward pass (Gloo's and torch.distributed's `async_op=True`).
//!
//! Buffers are owned (`Vec<T>`) and handed back by `wait`, so nothing the progress thread
//! writes can be read early. The queue is bounded: a start beyond its depth fails at once
//! with [`Error::Busy`] instead of blocking. Every operation keeps the communicator's
//! deadline, and `wait` gives up (with [`Error::Timeout`]) only after every operation
//! queued before it has had its own deadline, so no wait is unbounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use topoccl_plan::{Collective, CollectiveSpec, Rank, ReduceOp};

use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::exec::Dtype;
use crate::transport::AbortHandle;

/// Operations that may wait in the queue of an [`AsyncCommunicator`] by default.
pub const DEFAULT_QUEUE_DEPTH: usize = 64;

/// Slack per queued operation on top of its deadline, for the diagnosis a timeout runs.
const PER_OP_SLACK: Duration = Duration::from_secs(3);

type Job = Box<dyn FnOnce(&mut Communicator) + Send>;

/// A communicator whose operations run on its own progress thread.
pub struct AsyncCommunicator {
    tx: Option<SyncSender<Job>>,
    worker: Option<JoinHandle<Communicator>>,
    abort: AbortHandle,
    rank: Rank,
    world: u32,
    timeout: Duration,
    depth: usize,
    /// Operations started and not yet finished (queued or running).
    pending: Arc<AtomicUsize>,
}

/// An operation started on an [`AsyncCommunicator`].
#[must_use = "an operation's result (and its buffer) comes back from `wait`"]
pub struct Work<R> {
    rx: Receiver<Result<R>>,
    result: Option<Result<R>>,
    what: String,
    /// How long `wait` may take at most.
    limit: Duration,
}

impl<R> Work<R> {
    /// Whether the operation has finished (successfully or not); never blocks.
    pub fn test(&mut self) -> bool {
        if self.result.is_some() {
            return true;
        }
        match self.rx.try_recv() {
            Ok(r) => self.result = Some(r),
            Err(TryRecvError::Empty) => return false,
            Err(TryRecvError::Disconnected) => self.result = Some(Err(gone(&self.what))),
        }
        true
    }

    /// Blocks until the operation finishes and returns its result (the buffer it was
    /// given, now holding the output).
    pub fn wait(mut self) -> Result<R> {
        if let Some(r) = self.result.take() {
            return r;
        }
        match self.rx.recv_timeout(self.limit) {
            Ok(r) => r,
            Err(RecvTimeoutError::Disconnected) => Err(gone(&self.what)),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                op: self.what.clone(),
                after: self.limit,
                waiting: "the progress thread did not finish it (the operations queued before \
                          it outlived their deadlines); abort the communicator"
                    .into(),
                ranks: vec![],
            }),
        }
    }

    /// What this operation is, for messages.
    pub fn describe(&self) -> &str {
        &self.what
    }
}

fn gone(what: &str) -> Error {
    Error::CommAborted(format!(
        "{what}: the communicator's progress thread ended before finishing it"
    ))
}

impl Communicator {
    /// Moves this communicator onto a progress thread for nonblocking operations, with a
    /// queue of `depth` operations (≥ 1). [`AsyncCommunicator::into_inner`] gives it back.
    pub fn into_async(self, depth: usize) -> Result<AsyncCommunicator> {
        if depth == 0 {
            return Err(Error::Config(
                "the queue of nonblocking operations needs a depth of at least 1".into(),
            ));
        }
        let (rank, world) = (self.rank(), self.world());
        let timeout = self.config().timeout;
        let abort = self.abort_handle();
        let (tx, rx) = mpsc::sync_channel::<Job>(depth);
        let mut comm = self;
        let worker = std::thread::Builder::new()
            .name(format!("topoccl-rank{rank}"))
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job(&mut comm);
                }
                comm
            })
            .map_err(|e| Error::Io(format!("cannot start the progress thread: {e}")))?;
        Ok(AsyncCommunicator {
            tx: Some(tx),
            worker: Some(worker),
            abort,
            rank,
            world,
            timeout,
            depth,
            pending: Arc::new(AtomicUsize::new(0)),
        })
    }
}

impl AsyncCommunicator {
    pub fn rank(&self) -> Rank {
        self.rank
    }

    pub fn world(&self) -> u32 {
        self.world
    }

    /// Operations started and not finished yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Fails the running operation promptly and every queued and later one; the peers are
    /// told when the running operation fails.
    pub fn abort(&self) {
        self.abort.abort();
    }

    /// A handle that aborts from anywhere.
    pub fn abort_handle(&self) -> AbortHandle {
        self.abort.clone()
    }

    /// Starts `f` on the progress thread after the operations already started. `what`
    /// names it in errors. Errors: [`Error::Busy`] when `depth` operations are pending.
    pub fn start<R, F>(&mut self, what: &str, f: F) -> Result<Work<R>>
    where
        R: Send + 'static,
        F: FnOnce(&mut Communicator) -> Result<R> + Send + 'static,
    {
        let ahead = self.pending.fetch_add(1, Ordering::SeqCst);
        if ahead >= self.depth {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::Busy(format!(
                "cannot start {what}: {ahead} operations are already pending (the queue \
                 depth); wait for some first"
            )));
        }
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let pending = self.pending.clone();
        let job: Job = Box::new(move |comm| {
            let r = f(comm);
            pending.fetch_sub(1, Ordering::SeqCst);
            // The caller may have dropped its handle; then nobody wants the result.
            let _ = done_tx.send(r);
        });
        let tx = self.tx.as_ref().expect("only taken on drop");
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::SeqCst);
                return Err(gone(what));
            }
        }
        Ok(Work {
            rx: done_rx,
            result: None,
            what: what.to_string(),
            limit: (self.timeout + PER_OP_SLACK) * (ahead as u32 + 1),
        })
    }

    /// `buf = ⊕ over ranks of buf`.
    pub fn all_reduce<T: Dtype + Send + 'static>(
        &mut self,
        mut buf: Vec<T>,
        op: ReduceOp,
    ) -> Result<Work<Vec<T>>> {
        self.start("all_reduce", move |c| {
            c.all_reduce_in_place(&mut buf, op)?;
            Ok(buf)
        })
    }

    /// `buf` takes `root`'s contents.
    pub fn broadcast<T: Dtype + Send + 'static>(
        &mut self,
        mut buf: Vec<T>,
        root: Rank,
    ) -> Result<Work<Vec<T>>> {
        self.start("broadcast", move |c| {
            c.broadcast(&mut buf, root)?;
            Ok(buf)
        })
    }

    /// At `root`, `buf = ⊕ over ranks of buf`; elsewhere `buf` is unspecified afterwards.
    pub fn reduce<T: Dtype + Send + 'static>(
        &mut self,
        mut buf: Vec<T>,
        op: ReduceOp,
        root: Rank,
    ) -> Result<Work<Vec<T>>> {
        self.start("reduce", move |c| {
            c.reduce_in_place(&mut buf, op, root)?;
            Ok(buf)
        })
    }

    /// Every rank's `input`, in rank order.
    pub fn all_gather<T: Dtype + Send + 'static>(&mut self, input: Vec<T>) -> Result<Work<Vec<T>>> {
        self.with_output("all_gather", Collective::AllGather, input, |c, i, o| {
            c.all_gather(i, o)
        })
    }

    /// This rank's block of the reduction of every rank's `input` (whose length must be a
    /// multiple of the world size).
    pub fn reduce_scatter<T: Dtype + Send + 'static>(
        &mut self,
        input: Vec<T>,
        op: ReduceOp,
    ) -> Result<Work<Vec<T>>> {
        let world = self.world as usize;
        if input.len() % world != 0 {
            return Err(Error::BufferSize {
                what: "the reduce_scatter input",
                got: input.len(),
                needed: (input.len().div_ceil(world) * world) as u64,
                hint: "it must be a multiple of the world size",
            });
        }
        let spec = CollectiveSpec::new(
            Collective::ReduceScatter,
            self.world,
            (input.len() / world) as u64,
        );
        self.with_spec_output("reduce_scatter", spec, input, move |c, i, o| {
            c.reduce_scatter(i, o, op)
        })
    }

    /// Every rank's input at `root`, in rank order (elsewhere an empty result).
    pub fn gather<T: Dtype + Send + 'static>(
        &mut self,
        input: Vec<T>,
        root: Rank,
    ) -> Result<Work<Vec<T>>> {
        let spec =
            CollectiveSpec::new(Collective::Gather, self.world, input.len() as u64).with_root(root);
        self.with_spec_output("gather", spec, input, move |c, i, o| c.gather(i, o, root))
    }

    /// This rank's `count` elements of `root`'s input (which holds `world × count`; other
    /// ranks pass an empty input).
    pub fn scatter<T: Dtype + Send + 'static>(
        &mut self,
        input: Vec<T>,
        count: usize,
        root: Rank,
    ) -> Result<Work<Vec<T>>> {
        let spec =
            CollectiveSpec::new(Collective::Scatter, self.world, count as u64).with_root(root);
        self.with_spec_output("scatter", spec, input, move |c, i, o| c.scatter(i, o, root))
    }

    /// Block `j` of the input goes to rank `j`; block `i` of the output came from rank `i`.
    pub fn all_to_all<T: Dtype + Send + 'static>(&mut self, input: Vec<T>) -> Result<Work<Vec<T>>> {
        let n = input.len();
        let mut output = vec![T::default(); n];
        self.start("all_to_all", move |c| {
            c.all_to_all(&input, &mut output)?;
            Ok(output)
        })
    }

    pub fn barrier(&mut self) -> Result<Work<()>> {
        self.start("barrier", |c| c.barrier())
    }

    /// Sends `buf` to `peer`; the buffer comes back from `wait`.
    pub fn send<T: Dtype + Send + 'static>(
        &mut self,
        buf: Vec<T>,
        peer: Rank,
    ) -> Result<Work<Vec<T>>> {
        self.start("send", move |c| {
            c.send(&buf, peer)?;
            Ok(buf)
        })
    }

    /// Receives `buf.len()` elements from `peer` into `buf`.
    pub fn recv<T: Dtype + Send + 'static>(
        &mut self,
        mut buf: Vec<T>,
        peer: Rank,
    ) -> Result<Work<Vec<T>>> {
        self.start("recv", move |c| {
            c.recv(&mut buf, peer)?;
            Ok(buf)
        })
    }

    /// A collective whose output holds `world ×` the input's per-rank count.
    fn with_output<T, F>(
        &mut self,
        what: &str,
        c: Collective,
        input: Vec<T>,
        call: F,
    ) -> Result<Work<Vec<T>>>
    where
        T: Dtype + Send + 'static,
        F: FnOnce(&mut Communicator, &[T], &mut [T]) -> Result<()> + Send + 'static,
    {
        let spec = CollectiveSpec::new(c, self.world, input.len() as u64);
        self.with_spec_output(what, spec, input, call)
    }

    /// Runs `call` with an output buffer of the length `spec` gives this rank.
    fn with_spec_output<T, F>(
        &mut self,
        what: &str,
        spec: CollectiveSpec,
        input: Vec<T>,
        call: F,
    ) -> Result<Work<Vec<T>>>
    where
        T: Dtype + Send + 'static,
        F: FnOnce(&mut Communicator, &[T], &mut [T]) -> Result<()> + Send + 'static,
    {
        let mut output = vec![T::default(); spec.output_len(self.rank) as usize];
        self.start(what, move |c| {
            call(c, &input, &mut output)?;
            Ok(output)
        })
    }

    /// Waits for every pending operation, stops the progress thread and gives the
    /// communicator back (aborted, if an operation failed).
    pub fn into_inner(mut self) -> Result<Communicator> {
        self.tx.take();
        let worker = self.worker.take().expect("only taken here or on drop");
        worker
            .join()
            .map_err(|_| Error::CommAborted("the communicator's progress thread panicked".into()))
    }
}

impl Drop for AsyncCommunicator {
    fn drop(&mut self) {
        // Closing the queue lets the thread finish what is pending (each operation
        // bounded by its deadline) and drop the communicator, which says goodbye.
        self.tx.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}
