//! Ranks, MPI-style, without MPI: `--np N` makes the launching process start N copies of the
//! benchmark as rank processes on this host. They meet at a small coordinator (a thread of the
//! launcher) over loopback TCP, which provides the one collective everything else is built
//! from: [`Comm::allgather`] (every rank contributes a few numbers and receives everybody's, in
//! rank order). Barriers and timing reductions (min of starts, max of ends) are allgathers.
//!
//! Protocol: a rank connects and sends its rank number as one line; then, per collective, one
//! line of space-separated numbers. When every rank's line of a round has arrived the
//! coordinator sends all N lines, in rank order, to every rank. A rank that disconnects ends the
//! coordinator, so the other ranks fail instead of hanging, and the launcher stops them.
//!
//! Built with the cargo feature `mpi` and started by `mpirun`, the same [`Comm`] is backed by
//! MPI instead ([`crate::mpirun`]): rank and size from `MPI_COMM_WORLD`, native barriers and
//! reductions, and allgathers with `MPI_Allgather`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds to add to this host's clock to get rank 0's (bits of an f64; 0 unless an MPI job
/// spans hosts, see [`set_clock_offset`]).
static CLOCK_OFFSET: AtomicU64 = AtomicU64::new(0);

/// Seconds since the Unix epoch: one clock for every rank process of this host, so that "time
/// from the first rank's start to the last rank's end" can be computed across processes. In an
/// MPI job across hosts, corrected to rank 0's clock.
/// Exit status of every rank when a data check found mismatched bytes (IOR's `-W`/`-R`).
pub const DATA_CHECK_FAILED: i32 = 2;

pub fn now() -> f64 {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    t + f64::from_bits(CLOCK_OFFSET.load(Ordering::Relaxed))
}

/// Sets the correction [`now`] applies to this host's clock.
pub fn set_clock_offset(seconds: f64) {
    CLOCK_OFFSET.store(seconds.to_bits(), Ordering::Relaxed);
}

/// This rank's view of the job.
pub struct Comm {
    rank: usize,
    size: usize,
    nodes: usize,
    link: Link,
}

/// How the ranks reach each other.
enum Link {
    /// A job of one rank.
    Solo,
    /// `--np`: the launcher's coordinator over loopback TCP.
    Tcp(BufReader<TcpStream>, TcpStream),
    /// `mpirun`.
    #[cfg(feature = "mpi")]
    Mpi(crate::mpirun::MpiLink),
}

/// A broken job: the coordinator or another rank went away.
#[derive(Clone, Debug)]
pub struct CommError(pub String);

impl std::fmt::Display for CommError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CommError {}

impl Comm {
    /// A job of one rank; collectives are local.
    pub fn solo() -> Comm {
        Comm { rank: 0, size: 1, nodes: 1, link: Link::Solo }
    }

    /// An MPI job's view: rank `rank` of `size` on `nodes` hosts.
    #[cfg(feature = "mpi")]
    pub(crate) fn mpi(rank: usize, size: usize, nodes: usize, link: crate::mpirun::MpiLink) -> Comm {
        Comm { rank, size, nodes, link: Link::Mpi(link) }
    }

    /// Joins the job at coordinator `addr` as rank `rank` of `size`.
    pub fn connect(rank: usize, size: usize, addr: SocketAddr) -> Result<Comm, CommError> {
        let err = |e: std::io::Error| CommError(format!("rank {rank}: coordinator {addr}: {e}"));
        let stream = TcpStream::connect(addr).map_err(err)?;
        stream.set_nodelay(true).map_err(err)?;
        let mut w = stream.try_clone().map_err(err)?;
        writeln!(w, "{rank}").map_err(err)?;
        Ok(Comm { rank, size, nodes: 1, link: Link::Tcp(BufReader::new(stream), w) })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Hosts the ranks run on (1 unless an MPI job spans hosts).
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The MPI link of an MPI job's comm.
    #[cfg(feature = "mpi")]
    pub(crate) fn into_mpi(self) -> Option<crate::mpirun::MpiLink> {
        match self.link {
            Link::Mpi(m) => Some(m),
            _ => None,
        }
    }

    /// Whether the ranks are MPI processes (started by `mpirun`).
    pub fn is_mpi(&self) -> bool {
        match self.link {
            #[cfg(feature = "mpi")]
            Link::Mpi(_) => true,
            _ => false,
        }
    }

    /// Every rank's `values`, indexed by rank. Every rank of a round passes the same number
    /// of values (MPI_Allgather's rule; all callers do).
    pub fn allgather(&mut self, values: &[f64]) -> Result<Vec<Vec<f64>>, CommError> {
        let (r, w) = match &mut self.link {
            Link::Solo => return Ok(vec![values.to_vec()]),
            #[cfg(feature = "mpi")]
            Link::Mpi(m) => return Ok(m.allgather(values)),
            Link::Tcp(r, w) => (r, w),
        };
        let rank = self.rank;
        let lost = |what: &str| CommError(format!("rank {rank}: lost the coordinator ({what}); another rank failed"));
        let line: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        writeln!(w, "{}", line.join(" ")).map_err(|e| lost(&e.to_string()))?;
        let mut out = Vec::with_capacity(self.size);
        for _ in 0..self.size {
            let mut l = String::new();
            if r.read_line(&mut l).map_err(|e| lost(&e.to_string()))? == 0 {
                return Err(lost("end of stream"));
            }
            let vals = l
                .split_whitespace()
                .map(|t| t.parse::<f64>().map_err(|_| CommError(format!("rank {rank}: bad coordinator line {l:?}"))))
                .collect::<Result<Vec<f64>, _>>()?;
            out.push(vals);
        }
        Ok(out)
    }

    /// Waits until every rank has arrived.
    pub fn barrier(&mut self) -> Result<(), CommError> {
        #[cfg(feature = "mpi")]
        if let Link::Mpi(m) = &self.link {
            m.barrier();
            return Ok(());
        }
        self.allgather(&[]).map(|_| ())
    }

    /// Reductions over all ranks (MPI_Allreduce under MPI, else of an allgather).
    pub fn min(&mut self, v: f64) -> Result<f64, CommError> {
        #[cfg(feature = "mpi")]
        if let Link::Mpi(m) = &self.link {
            return Ok(m.reduce(v, crate::mpirun::Reduce::Min));
        }
        Ok(self.allgather(&[v])?.iter().map(|x| x[0]).fold(f64::INFINITY, f64::min))
    }

    pub fn max(&mut self, v: f64) -> Result<f64, CommError> {
        #[cfg(feature = "mpi")]
        if let Link::Mpi(m) = &self.link {
            return Ok(m.reduce(v, crate::mpirun::Reduce::Max));
        }
        Ok(self.allgather(&[v])?.iter().map(|x| x[0]).fold(f64::NEG_INFINITY, f64::max))
    }

    pub fn sum(&mut self, v: f64) -> Result<f64, CommError> {
        #[cfg(feature = "mpi")]
        if let Link::Mpi(m) = &self.link {
            return Ok(m.reduce(v, crate::mpirun::Reduce::Sum));
        }
        Ok(self.allgather(&[v])?.iter().map(|x| x[0]).sum())
    }
}

/// The coordinator: accepts `n` ranks on `listener`, then serves allgather rounds until a rank
/// disconnects (normally: all of them, at exit).
pub fn serve(listener: TcpListener, n: usize) {
    let mut conns: Vec<Option<(BufReader<TcpStream>, TcpStream)>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let Ok((s, _)) = listener.accept() else { return };
        let _ = s.set_nodelay(true);
        let Ok(w) = s.try_clone() else { return };
        let mut r = BufReader::new(s);
        let mut l = String::new();
        if r.read_line(&mut l).is_err() {
            return;
        }
        match l.trim().parse::<usize>() {
            Ok(rank) if rank < n && conns[rank].is_none() => conns[rank] = Some((r, w)),
            _ => return,
        }
    }
    let mut conns: Vec<(BufReader<TcpStream>, TcpStream)> = conns.into_iter().map(|c| c.unwrap()).collect();
    loop {
        let mut lines = String::new();
        for (r, _) in conns.iter_mut() {
            let mut l = String::new();
            match r.read_line(&mut l) {
                Ok(0) | Err(_) => return,
                Ok(_) => lines.push_str(&l),
            }
        }
        for (_, w) in conns.iter_mut() {
            if w.write_all(lines.as_bytes()).is_err() {
                return;
            }
        }
    }
}

/// Hidden rank arguments appended to the launcher's own command line.
pub struct RankArgs {
    pub config: Option<PathBuf>,
    pub posix_dir: Option<PathBuf>,
}

/// Starts `np` rank processes (this executable, with the launcher's arguments plus
/// `--rank R --ranks N --coord ADDR` and the resolved `extra`), runs the coordinator, waits for
/// all. If one fails, the others are stopped. Returns the exit status for the launcher: 0, or
/// the first failing rank's status.
pub fn launch(np: usize, extra: &RankArgs) -> std::io::Result<i32> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let coordinator = std::thread::spawn(move || serve(listener, np));
    let exe = std::env::current_exe()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut children: Vec<Option<Child>> = Vec::new();
    for rank in 0..np {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .arg("--rank")
            .arg(rank.to_string())
            .arg("--ranks")
            .arg(np.to_string())
            .arg("--coord")
            .arg(addr.to_string());
        if let Some(c) = &extra.config {
            cmd.arg("--rank-config").arg(c);
        }
        if let Some(d) = &extra.posix_dir {
            cmd.arg("--rank-posix-dir").arg(d);
        }
        cmd.stdin(Stdio::null());
        match cmd.spawn() {
            Ok(c) => children.push(Some(c)),
            Err(e) => {
                stop_all(&mut children);
                // Unblock the coordinator's accept so its thread ends.
                let _ = TcpStream::connect(addr);
                return Err(e);
            }
        }
    }
    let mut status = 0;
    while children.iter().any(|c| c.is_some()) {
        for slot in children.iter_mut() {
            if let Some(c) = slot {
                if let Ok(Some(s)) = c.try_wait() {
                    *slot = None;
                    let code = s.code().unwrap_or(1);
                    if code != 0 && status == 0 {
                        status = code;
                    }
                }
            }
        }
        if status != 0 && status != DATA_CHECK_FAILED {
            // A failed rank: the others may be waiting for it at a barrier. (A failed data
            // check is known to every rank, which all finish by themselves; rank 0 still has
            // its report to print.)
            stop_all(&mut children);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if status != 0 {
        let _ = TcpStream::connect(addr);
    }
    let _ = coordinator.join();
    Ok(status)
}

fn stop_all(children: &mut [Option<Child>]) {
    for slot in children.iter_mut() {
        if let Some(c) = slot {
            let _ = c.kill();
            let _ = c.wait();
        }
        *slot = None;
    }
}
