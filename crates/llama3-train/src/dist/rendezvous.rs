//! The rendezvous of a job that MPI did not start (torchrun-style variables, `llama3 train
//! --num-gpus N`): rank 0 listens on `MASTER_ADDR:MASTER_PORT` and hands every other rank the
//! same bytes (NCCL's unique id), as torch.distributed's TCP store does for its process group.
//! Only this one exchange goes over it; the collectives themselves are the backend's.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Rank 0 sends `payload` to the `world_size - 1` other ranks; they return it. `addr` is
/// `MASTER_ADDR:MASTER_PORT`. The other ranks retry connecting until `timeout` (rank 0 may
/// start later); rank 0 waits as long for them.
pub fn share(
    addr: &str,
    rank: usize,
    world_size: usize,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let io = |what: &str, e: std::io::Error| {
        Error::Input(format!(
            "rendezvous at {addr}: {what}: {e} (rank {rank} of {world_size})"
        ))
    };
    let deadline = Instant::now() + timeout;
    if rank == 0 {
        let listener = TcpListener::bind(addr).map_err(|e| io("cannot listen", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| io("cannot listen", e))?;
        let mut joined = 0;
        while joined + 1 < world_size {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(|e| io("accept", e))?;
                    let len = (payload.len() as u32).to_le_bytes();
                    s.write_all(&len)
                        .and_then(|()| s.write_all(payload))
                        .map_err(|e| io("cannot send", e))?;
                    joined += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(Error::Input(format!(
                            "rendezvous at {addr}: {joined} of {} other ranks joined within {} \
                             s; check that every rank was started with the same MASTER_ADDR \
                             and MASTER_PORT",
                            world_size - 1,
                            timeout.as_secs()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(io("accept", e)),
            }
        }
        return Ok(payload.to_vec());
    }
    let target = addr
        .to_socket_addrs()
        .map_err(|e| io("bad address", e))?
        .next()
        .ok_or_else(|| Error::Input(format!("rendezvous address {addr} resolves to nothing")))?;
    let mut stream = loop {
        match TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(io("rank 0 never answered", e)),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| io("connect", e))?;
    let mut len = [0u8; 4];
    stream
        .read_exact(&mut len)
        .map_err(|e| io("cannot receive", e))?;
    let mut out = vec![0u8; u32::from_le_bytes(len) as usize];
    stream
        .read_exact(&mut out)
        .map_err(|e| io("cannot receive", e))?;
    Ok(out)
}

/// `MASTER_ADDR:MASTER_PORT` from the environment (torchrun's defaults: 127.0.0.1, 29500).
pub fn master_addr() -> String {
    let host = std::env::var("MASTER_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("MASTER_PORT").unwrap_or_else(|_| "29500".into());
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rank_gets_rank_zeros_bytes() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let t = Duration::from_secs(20);
        // Ranks 1 and 2 start first and retry until rank 0 listens.
        let others: Vec<_> = (1..3)
            .map(|r| {
                let a = addr.clone();
                std::thread::spawn(move || share(&a, r, 3, b"ignored", t).unwrap())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let id: Vec<u8> = (0..128).collect();
        assert_eq!(share(&addr, 0, 3, &id, t).unwrap(), id);
        for o in others {
            assert_eq!(o.join().unwrap(), id);
        }
        // Nobody joining is an error within the timeout, not a hang.
        let e = share(&addr, 0, 2, &id, Duration::from_millis(300)).unwrap_err();
        assert!(e.to_string().contains("0 of 1 other ranks joined"), "{e}");
    }
}
