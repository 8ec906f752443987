//! Measurement programs for pfs: `pfs-ior` ([`ior`]) and `pfs-mdtest` ([`mdtest`]) take IOR's and
//! mdtest's command lines and print their output layouts, over pfs or over local files (the
//! POSIX baseline). `--np N` runs N rank processes on this host, joined by a small coordinator
//! ([`comm`]); without `--config` they run against an embedded cluster ([`launch`]). Built with
//! the cargo feature `mpi`, they also run as the ranks of `mpirun` ([`mpirun`]).

pub mod comm;
pub mod ior;
pub mod launch;
pub mod mdtest;
pub mod mpirun;
pub mod pattern;
pub mod store;
