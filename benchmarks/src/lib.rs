//! Measurement programs for pfs. `pfs-ior` and `pfs-mdtest` (IOR/mdtest command lines over the
//! client library) arrive with the benchmarks issue; until then `pfs demo` and `pfs-cp --stats`
//! measure the data path.
