//! Who this process is in a data-parallel job, from the launcher's environment variables:
//! Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`), MPICH / Intel MPI / Hydra (`PMI_*`, `MPI_LOCALRANKID`),
//! Slurm's `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`), torchrun and
//! `llama3 train --num-gpus N` (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, with
//! `MASTER_ADDR` / `MASTER_PORT` for the rendezvous). The first launcher whose variables are
//! set names the rank; none set is one process alone.

/// The launcher that started this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// No launcher: one process.
    None,
    OpenMpi,
    /// MPICH, Intel MPI and other Hydra / PMI launchers.
    Pmi,
    Slurm,
    /// torchrun, or `llama3 train --num-gpus N` (the same variables).
    Torchrun,
}

impl Launcher {
    /// Whether MPI started the ranks (so `MPI_Init` finds its peers without a rendezvous).
    pub fn is_mpi(self) -> bool {
        matches!(self, Launcher::OpenMpi | Launcher::Pmi)
    }
}

impl std::fmt::Display for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Launcher::None => "no launcher",
            Launcher::OpenMpi => "Open MPI (mpirun)",
            Launcher::Pmi => "an MPI launcher (PMI)",
            Launcher::Slurm => "Slurm (srun)",
            Launcher::Torchrun => "torchrun-style variables (RANK, WORLD_SIZE)",
        })
    }
}

/// This process's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    /// 0-based rank in the job, and the number of ranks.
    pub rank: usize,
    pub world_size: usize,
    /// Rank among the ranks on this machine, and their number (they share its cores and GPUs).
    pub local_rank: usize,
    pub local_size: usize,
}

impl Launch {
    /// One process, no launcher.
    pub fn single() -> Self {
        Self {
            launcher: Launcher::None,
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_size: 1,
        }
    }

    /// From this process's environment.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(&|k| std::env::var(k).ok())
    }

    /// From the variables `var` gives (tests pass a map). A malformed value is an error that
    /// names the variable.
    pub fn from_vars(var: &dyn Fn(&str) -> Option<String>) -> Result<Self, String> {
        let num = |k: &str| -> Result<Option<usize>, String> {
            match var(k) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("the launcher variable {k}={v:?} is not a number")),
            }
        };
        // (launcher, rank, size, local rank, local size): the first launcher that sets both
        // rank and size.
        let table: [(Launcher, [&str; 4]); 4] = [
            (
                Launcher::OpenMpi,
                [
                    "OMPI_COMM_WORLD_RANK",
                    "OMPI_COMM_WORLD_SIZE",
                    "OMPI_COMM_WORLD_LOCAL_RANK",
                    "OMPI_COMM_WORLD_LOCAL_SIZE",
                ],
            ),
            (
                Launcher::Pmi,
                ["PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"],
            ),
            (
                Launcher::Torchrun,
                ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"],
            ),
            (
                Launcher::Slurm,
                [
                    "SLURM_PROCID",
                    "SLURM_NTASKS",
                    "SLURM_LOCALID",
                    "SLURM_NTASKS_PER_NODE",
                ],
            ),
        ];
        for (launcher, [rank, size, local_rank, local_size]) in table {
            let (Some(r), Some(n)) = (num(rank)?, num(size)?) else {
                continue;
            };
            if n == 0 || r >= n {
                return Err(format!(
                    "the launcher says rank {r} of {n} ({rank}, {size}): not a valid rank"
                ));
            }
            // Slurm's per-node count may read "2(x3)"; take its leading number.
            let local_n = match launcher {
                Launcher::Slurm => var(local_size)
                    .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()),
                _ => num(local_size)?,
            };
            let local_r = num(local_rank)?.unwrap_or(0);
            let local_n = local_n.unwrap_or(1).max(local_r + 1);
            return Ok(Self {
                launcher,
                rank: r,
                world_size: n,
                local_rank: local_r,
                local_size: local_n,
            });
        }
        Ok(Self::single())
    }

    /// The worker threads for this rank: the cores this process may use, shared with the
    /// other ranks on this machine when the launcher did not bind each rank to its own cores.
    pub fn threads(&self) -> usize {
        let allowed = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: sysconf only reads a system constant.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        let online = usize::try_from(online).unwrap_or(allowed);
        match self.local_size > 1 && allowed >= online {
            true => (allowed / self.local_size).max(1),
            false => allowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch, String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(&|k| m.get(k).cloned())
    }

    #[test]
    fn reads_each_launcher() {
        assert_eq!(launch(&[]).unwrap(), Launch::single());
        let ompi = launch(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ])
        .unwrap();
        assert_eq!(
            (ompi.launcher, ompi.rank, ompi.world_size, ompi.local_size),
            (Launcher::OpenMpi, 1, 4, 2)
        );
        let torch = launch(&[("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "3")]).unwrap();
        assert_eq!(
            (torch.launcher, torch.rank, torch.local_size),
            (Launcher::Torchrun, 3, 4)
        );
        let slurm = launch(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "6"),
            ("SLURM_LOCALID", "2"),
            ("SLURM_NTASKS_PER_NODE", "3(x2)"),
        ])
        .unwrap();
        assert_eq!(
            (slurm.launcher, slurm.rank, slurm.local_size),
            (Launcher::Slurm, 5, 3)
        );
        // mpirun inside a Slurm allocation: the MPI variables win.
        let both = launch(&[
            ("PMI_RANK", "0"),
            ("PMI_SIZE", "2"),
            ("SLURM_PROCID", "7"),
            ("SLURM_NTASKS", "9"),
        ])
        .unwrap();
        assert_eq!((both.launcher, both.world_size), (Launcher::Pmi, 2));
    }

    #[test]
    fn bad_values_are_errors() {
        let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("RANK=\"x\""), "{e}");
        let e = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.contains("rank 2 of 2"), "{e}");
    }
}
