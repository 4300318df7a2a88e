//! The NCCL backend (`nccl` feature): one rank per GPU (`--num-gpus N`, torchrun's variables,
//! or an MPI launcher), the collectives NCCL's own, through cudarc's bindings. Rank 0 makes
//! NCCL's unique id and hands it to the others over the rendezvous (`MASTER_ADDR` /
//! `MASTER_PORT`; over MPI when MPI launched the job and the build has it). Gradients are
//! summed on the device by NCCL's all-reduce, whose ring reduces each chunk once, so every
//! rank gets the same bits; the few host numbers go through device buffers.

use std::sync::Arc;
use std::time::Duration;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use candle_core::cuda_backend::cudarc::nccl::result::{NcclError, NcclStatus};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, NcclType, ReduceOp};

use candle_core::cuda_backend::CudaStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::{rendezvous, Collective, Launch};
use crate::{Error, Result};

/// What cudarc's NCCL calls return.
type NcclResult = std::result::Result<NcclStatus, NcclError>;

pub struct Nccl {
    comm: Comm,
    stream: Arc<CudaStream>,
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Input(format!("NCCL {what}: {e:?}"))
}

impl Nccl {
    /// Joins the job on GPU `local_rank` of this machine.
    pub fn init(launch: &Launch, timeout: Duration) -> Result<Self> {
        let device = match llama3::device::parse(&format!("cuda:{}", launch.local_rank))? {
            Device::Cuda(d) => d,
            _ => {
                return Err(Error::Input(format!(
                    "rank {}: no CUDA device {}",
                    launch.rank, launch.local_rank
                )))
            }
        };
        let mine = match launch.rank {
            0 => Id::new().map_err(|e| nccl_err("unique id", e))?,
            _ => Id::uninit([0; 128]),
        };
        let bytes: Vec<u8> = mine.internal().iter().map(|&c| c as u8).collect();
        let shared = share_id(launch, &bytes, timeout)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(&shared) {
            *d = *s as std::ffi::c_char;
        }
        let stream = device.cuda_stream();
        // NCCL takes the thread's current device for the communicator: this rank's GPU.
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| nccl_err("device", e))?;
        let comm = Comm::from_rank(
            stream.clone(),
            launch.rank,
            launch.world_size,
            Id::uninit(internal),
        )
        .map_err(|e| nccl_err("init", e))?;
        Ok(Self { comm, stream })
    }

    /// Host `input` to the device, `op` from it into a device buffer of `out.len()`, the
    /// result back into `out` (the few host numbers and the CPU fallback take this way).
    fn via_device<T: DeviceRepr + ValidAsZeroBits + NcclType>(
        &self,
        what: &str,
        input: &[T],
        out: &mut [T],
        op: impl FnOnce(&Comm, &CudaSlice<T>, &mut CudaSlice<T>) -> NcclResult,
    ) -> Result<()> {
        let send = self
            .stream
            .clone_htod(input)
            .map_err(|e| nccl_err("copy", e))?;
        let mut recv = self
            .stream
            .alloc_zeros::<T>(out.len())
            .map_err(|e| nccl_err("alloc", e))?;
        op(&self.comm, &send, &mut recv).map_err(|e| nccl_err(what, e))?;
        self.stream
            .memcpy_dtoh(&recv, out)
            .map_err(|e| nccl_err("copy", e))?;
        self.sync()
    }

    fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| nccl_err("stream", e))
    }
}

/// Rank 0's id bytes on every rank: over MPI when MPI launched the job (and this build has
/// it), else over the TCP rendezvous.
fn share_id(launch: &Launch, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    #[cfg(feature = "mpi")]
    if launch.launcher.is_mpi() {
        let mpi = super::mpi::Mpi::init(launch)?;
        let mut v: Vec<f32> = bytes.iter().map(|&b| b as f32).collect();
        mpi.broadcast_f32(&mut v, 0)?;
        // MPI stays initialized for the process (the Universe is leaked on purpose: NCCL
        // carries the collectives from here on).
        std::mem::forget(mpi);
        return Ok(v.into_iter().map(|x| x as u8).collect());
    }
    rendezvous::share(
        &rendezvous::master_addr(),
        launch.rank,
        launch.world_size,
        bytes,
        timeout,
    )
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn size(&self) -> usize {
        self.comm.world_size()
    }
    fn backend(&self) -> &'static str {
        "nccl"
    }
    fn reduce_scatter_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        self.via_device("reduce-scatter", input, out, |c, send, recv| {
            c.reduce_scatter(send, recv, &ReduceOp::Sum)
        })
    }
    fn all_gather_f32(&self, chunk: &[f32], out: &mut [f32]) -> Result<()> {
        self.via_device("all-gather", chunk, out, |c, send, recv| {
            c.all_gather(send, recv)
        })
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        let input = buf.to_vec();
        self.via_device("all-reduce", &input, buf, |c, send, recv| {
            c.all_reduce(send, recv, &ReduceOp::Sum)
        })
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        let input = buf.to_vec();
        self.via_device("broadcast", &input, buf, |c, send, recv| {
            c.broadcast(Some(send), recv, root as i32)
        })
    }
    fn barrier(&self) -> Result<()> {
        self.all_reduce_f64(&mut [0.0])
    }
    fn unwatched(&self) -> &dyn Collective {
        self
    }
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().is_cuda() {
            let mut v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            self.all_reduce_f32(&mut v)?;
            return Ok(Tensor::from_vec(v, t.shape(), t.device())?);
        }
        let f = t.to_dtype(DType::F32)?.contiguous()?;
        let out = f.apply_op1_no_bwd(&Sum(self))?;
        self.sync()?;
        Ok(out.to_dtype(t.dtype())?)
    }
}

/// NCCL's all-reduce of a contiguous f32 device tensor into a new one.
struct Sum<'a>(&'a Nccl);

impl CustomOp1 for Sum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce takes CUDA tensors")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce takes a contiguous tensor")
        };
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let mut dst = self
            .0
            .stream
            .alloc_zeros::<f32>(end - start)
            .map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        self.0
            .comm
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        let dev = s.device().clone();
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}
