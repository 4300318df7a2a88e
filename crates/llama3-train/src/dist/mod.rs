//! Data parallelism: every rank holds the whole model, takes its share of each step's
//! micro-batches, and the gradients are summed across ranks before clipping, so every rank
//! steps alike (as PyTorch DDP). The collectives come from an existing communication engine
//! behind one small trait: MPI between CPU processes and machines (`mpi` cargo feature, the
//! `mpi` crate over Open MPI or MPICH), NCCL between GPUs (`nccl` feature, cudarc's
//! bindings). Without either, a job of more than one rank is an error that names the feature.
//!
//! Sums are made identical on every rank by construction: each chunk of a buffer is reduced
//! once, by one rank (reduce-scatter), then gathered by all (all-gather), as NCCL's ring
//! does, rather than trusting an all-reduce whose algorithm may round differently per rank.
//! With two ranks a chunk's sum is `a + b`, the bits one process accumulating the same two
//! micro-batches gets.

pub mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

pub use launch::{Launch, Launcher};

use crate::{Error, Result};

/// The collectives data parallelism needs. Buffers hold the same number of elements on
/// every rank; every rank calls the same collectives in the same order.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// What carries the sums, for messages (`mpi`, `nccl`, `single`).
    fn backend(&self) -> &'static str;
    /// `out[i]` (of `input.len() / size`) becomes the sum over ranks of chunk `rank` of
    /// `input`.
    fn reduce_scatter_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()>;
    /// `out` (`chunk.len() * size`) becomes every rank's `chunk`, in rank order.
    fn all_gather_f32(&self, chunk: &[f32], out: &mut [f32]) -> Result<()>;
    /// Sums a few numbers in place (control values, losses, token counts).
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()>;
    /// `buf` becomes rank `root`'s.
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()>;
    fn barrier(&self) -> Result<()>;

    /// Time spent in collectives so far, where it is measured (a multi-rank job).
    fn busy(&self) -> Option<Duration> {
        None
    }

    /// The same collectives without a deadline ([`Watched`]'s inner ones): for waits that
    /// last as long as another rank's work, such as rank 0 tokenizing the corpus.
    fn unwatched(&self) -> &dyn Collective;

    /// Sums `buf` over ranks, in place, identically on every rank: reduce-scatter then
    /// all-gather (into `buf` itself when its length is a multiple of the rank count, else
    /// over a padded copy).
    fn all_reduce_f32(&self, buf: &mut [f32]) -> Result<()> {
        let n = self.size();
        if n == 1 {
            return Ok(());
        }
        let chunk = buf.len().div_ceil(n);
        if buf.len() == chunk * n {
            let mut mine = vec![0f32; chunk];
            self.reduce_scatter_f32(buf, &mut mine)?;
            return self.all_gather_f32(&mine, buf);
        }
        let mut padded = vec![0f32; chunk * n];
        padded[..buf.len()].copy_from_slice(buf);
        let mut mine = vec![0f32; chunk];
        self.reduce_scatter_f32(&padded, &mut mine)?;
        self.all_gather_f32(&mine, &mut padded)?;
        buf.copy_from_slice(&padded[..buf.len()]);
        Ok(())
    }

    /// `t` summed over ranks. Through host memory here; NCCL sums device tensors in place.
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let mut v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.all_reduce_f32(&mut v)?;
        Ok(Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }
}

/// One process alone: every collective is the identity.
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn backend(&self) -> &'static str {
        "single"
    }
    fn reduce_scatter_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(&input[..out.len()]);
        Ok(())
    }
    fn all_gather_f32(&self, chunk: &[f32], out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(chunk);
        Ok(())
    }
    fn all_reduce_f64(&self, _: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn broadcast_f32(&self, _: &mut [f32], _: usize) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn unwatched(&self) -> &dyn Collective {
        self
    }
}

/// Which communication engine carries a job's collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Mpi,
    Nccl,
}

/// The collectives for `launch`: [`Single`] for one rank; for more, MPI on CPUs (or when
/// MPI launched the job and the model is not on a GPU), NCCL for GPU ranks. `timeout`
/// bounds the wait in any one collective: past it the process says which collective waited
/// and exits (a rank died or hangs), never hanging the job.
pub fn connect(launch: &Launch, gpu: bool, timeout: Duration) -> Result<Box<dyn Collective>> {
    if launch.world_size == 1 {
        return Ok(Box::new(Single));
    }
    let backend = if gpu { Backend::Nccl } else { Backend::Mpi };
    let inner = open(backend, launch, timeout)?
        .ok_or_else(|| Error::Input(missing_feature(launch, backend)))?;
    Ok(Box::new(Watched::new(inner, timeout)))
}

/// The backend's collectives, None when this build lacks it.
#[allow(unused_variables)]
fn open(
    backend: Backend,
    launch: &Launch,
    timeout: Duration,
) -> Result<Option<Box<dyn Collective>>> {
    Ok(match backend {
        #[cfg(feature = "mpi")]
        Backend::Mpi => Some(Box::new(mpi::Mpi::init(launch)?)),
        #[cfg(feature = "nccl")]
        Backend::Nccl => Some(Box::new(nccl::Nccl::init(launch, timeout)?)),
        #[allow(unreachable_patterns)]
        _ => None,
    })
}

/// What to say when a multi-rank job reaches a build without its backend.
fn missing_feature(launch: &Launch, backend: Backend) -> String {
    let (feature, what) = match backend {
        Backend::Mpi => ("mpi", "CPU ranks exchange gradients over MPI"),
        Backend::Nccl => ("nccl", "GPU ranks exchange gradients over NCCL"),
    };
    format!(
        "{} started this process as rank {} of {}, but this llama3 was built without the \
         `{feature}` cargo feature ({what}): rebuild with `cargo build --release -p llama3-cli \
         --features {feature}`{}",
        launch.launcher,
        launch.rank,
        launch.world_size,
        match backend {
            Backend::Mpi => " (needs Open MPI or MPICH and libclang)",
            Backend::Nccl => ", as scripts/build-cuda.sh does",
        }
    )
}

/// A collective with a deadline: a watchdog thread ends the process when one call waits
/// longer than the timeout (a peer died without the launcher noticing, or hangs), naming the
/// call and this rank. Also times the calls (`busy`), for the step's communication time.
pub struct Watched {
    inner: Box<dyn Collective>,
    /// Milliseconds since `epoch` when the call in flight began; 0 when none is.
    since: Arc<AtomicU64>,
    what: Arc<std::sync::Mutex<&'static str>>,
    epoch: Instant,
    busy: std::cell::Cell<Duration>,
}

impl Watched {
    pub fn new(inner: Box<dyn Collective>, timeout: Duration) -> Self {
        let since = Arc::new(AtomicU64::new(0));
        let what = Arc::new(std::sync::Mutex::new(""));
        let epoch = Instant::now();
        let (rank, size, backend) = (inner.rank(), inner.size(), inner.backend());
        let (s, w) = (since.clone(), what.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let began = s.load(Ordering::Relaxed);
            if began == 0 {
                continue;
            }
            let waited = epoch.elapsed().saturating_sub(Duration::from_millis(began));
            if waited > timeout {
                let op = w.lock().map(|g| *g).unwrap_or("a collective");
                eprintln!(
                    "error: rank {rank} of {size}: {op} ({backend}) has waited {:.0} s for the \
                     other ranks (limit --dist-timeout {} s): one of them died or hangs; its \
                     own output says which",
                    waited.as_secs_f64(),
                    timeout.as_secs()
                );
                std::process::exit(1);
            }
        });
        Self {
            inner,
            since,
            what,
            epoch,
            busy: Default::default(),
        }
    }

    fn timed<T>(&self, op: &'static str, f: impl FnOnce(&dyn Collective) -> T) -> T {
        if let Ok(mut w) = self.what.lock() {
            *w = op;
        }
        let t0 = Instant::now();
        let ms = t0.duration_since(self.epoch).as_millis() as u64;
        self.since.store(ms.max(1), Ordering::Relaxed);
        let out = f(self.inner.as_ref());
        self.since.store(0, Ordering::Relaxed);
        self.busy.set(self.busy.get() + t0.elapsed());
        out
    }
}

impl Collective for Watched {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn reduce_scatter_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        self.timed("a reduce-scatter", |c| c.reduce_scatter_f32(input, out))
    }
    fn all_gather_f32(&self, chunk: &[f32], out: &mut [f32]) -> Result<()> {
        self.timed("an all-gather", |c| c.all_gather_f32(chunk, out))
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        self.timed("an all-reduce", |c| c.all_reduce_f64(buf))
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.timed("a broadcast", |c| c.broadcast_f32(buf, root))
    }
    fn barrier(&self) -> Result<()> {
        self.timed("a barrier", |c| c.barrier())
    }
    fn busy(&self) -> Option<Duration> {
        Some(self.busy.get())
    }
    fn unwatched(&self) -> &dyn Collective {
        self.inner.as_ref()
    }
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        // The inner one's (NCCL's own on the device), timed as one call.
        self.timed("an all-reduce", |c| c.all_reduce_tensor(t))
    }
}

/// Whether any rank says `yes` (a stop asked on one rank stops them all at the same step).
pub fn any(comm: &dyn Collective, yes: bool) -> Result<bool> {
    let mut v = [yes as u8 as f64];
    comm.all_reduce_f64(&mut v)?;
    Ok(v[0] > 0.0)
}

/// Rank 0's `value` on every rank (the others' are ignored).
pub fn from_root(comm: &dyn Collective, value: bool) -> Result<bool> {
    let mut v = [(comm.rank() == 0 && value) as u8 as f64];
    comm.all_reduce_f64(&mut v)?;
    Ok(v[0] > 0.0)
}

/// Makes every parameter rank 0's (the ranks built or loaded the same model; this rules out
/// any difference, as DDP's first broadcast does).
pub fn broadcast_params(
    comm: &dyn Collective,
    params: &[(String, candle_core::Var)],
) -> Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    for (_, var) in params {
        let t = var.as_tensor();
        let mut v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        comm.broadcast_f32(&mut v, 0)?;
        let back = Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(t.dtype())?;
        var.set(&back)?;
    }
    Ok(())
}
