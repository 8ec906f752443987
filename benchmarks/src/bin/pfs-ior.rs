//! `pfs-ior`: IOR's command line and output over pfs or local files. See benchmarks/README.md.
//!
//! ```text
//! pfs-ior --np 4 -a PFS,POSIX -F -t 2m -b 256m -e      # file per process, PFS vs local disk
//! pfs-ior --np 4 -w -r -W -R -C -t 47008 -b 47008 -s 500   # strided shared file, checked
//! pfs-ior --np 4 --preset ior-hard --size 32m
//! ```

fn main() {
    pfs_common::logging::init();
    std::process::exit(benchmarks::ior::main());
}
