//! `pfs-mdtest`: mdtest's command line and summary over pfs or local files. See
//! benchmarks/README.md.
//!
//! ```text
//! pfs-mdtest --np 4 -n 1000 -F -u        # empty files, a directory per rank
//! pfs-mdtest --np 4 --preset mdtest-hard --size 2000
//! ```

fn main() {
    pfs_common::logging::init();
    std::process::exit(benchmarks::mdtest::main());
}
