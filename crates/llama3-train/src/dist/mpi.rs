//! The MPI backend (`mpi` feature): the `mpi` crate over the system's Open MPI or MPICH, for
//! CPU ranks on one machine or many (`mpirun -np N`, `srun`). MPI's own error handling
//! applies: an MPI error aborts the job; a rank that dies is noticed by the launcher, which
//! ends the others and names it.

use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::Threading;

use super::{Collective, Launch};
use crate::{Error, Result};

pub struct Mpi {
    world: SimpleCommunicator,
    /// Keeps MPI initialized; dropping it finalizes.
    _universe: Universe,
}

impl Mpi {
    /// `MPI_Init` (collectives come from the main thread only; the compute threads never call
    /// MPI), checked against what the launcher's variables said.
    pub fn init(launch: &Launch) -> Result<Self> {
        let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| Error::Input("MPI was initialized twice in this process".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if (rank, size) != (launch.rank, launch.world_size) {
            return Err(Error::Input(format!(
                "{} says rank {} of {}, MPI says rank {rank} of {size}: the variables of \
                 another launcher are set; start the job with one launcher",
                launch.launcher, launch.rank, launch.world_size
            )));
        }
        Ok(Self {
            world,
            _universe: universe,
        })
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn size(&self) -> usize {
        self.world.size() as usize
    }
    fn backend(&self) -> &'static str {
        "mpi"
    }
    fn reduce_scatter_f32(&self, input: &[f32], out: &mut [f32]) -> Result<()> {
        check(input.len(), out.len() * self.size(), "reduce-scatter")?;
        self.world
            .reduce_scatter_block_into(input, out, SystemOperation::sum());
        Ok(())
    }
    fn all_gather_f32(&self, chunk: &[f32], out: &mut [f32]) -> Result<()> {
        check(out.len(), chunk.len() * self.size(), "all-gather")?;
        self.world.all_gather_into(chunk, out);
        Ok(())
    }
    fn all_reduce_f64(&self, buf: &mut [f64]) -> Result<()> {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }
    fn broadcast_f32(&self, buf: &mut [f32], root: usize) -> Result<()> {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
    fn unwatched(&self) -> &dyn Collective {
        self
    }
}

fn check(got: usize, want: usize, op: &str) -> Result<()> {
    match got == want {
        true => Ok(()),
        false => Err(Error::Input(format!(
            "{op}: buffer of {got} elements where {want} are needed"
        ))),
    }
}
