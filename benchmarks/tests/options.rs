//! Option parsing of pfs-ior and pfs-mdtest: IOR's and mdtest's meanings, sizes, presets.

use benchmarks::error::OptionError;
use benchmarks::ior::{IorArgs, Preset as IorPreset};
use benchmarks::mdtest::MdtestArgs;
use benchmarks::store::Api;
use clap::Parser;

/// How a command line is refused: by clap (a bad value or flag; its message), or by the
/// checks after parsing.
#[derive(Debug)]
enum Refused {
    #[allow(dead_code)] // shown by Debug when a test fails
    Clap(String),
    Option(OptionError),
}

fn ior(args: &[&str]) -> Result<benchmarks::ior::Params, Refused> {
    let mut v = vec!["pfs-ior"];
    v.extend_from_slice(args);
    IorArgs::try_parse_from(v).map_err(|e| Refused::Clap(e.to_string()))?.params().map_err(Refused::Option)
}

fn mdtest(args: &[&str]) -> Result<benchmarks::mdtest::Params, Refused> {
    let mut v = vec!["pfs-mdtest"];
    v.extend_from_slice(args);
    MdtestArgs::try_parse_from(v).map_err(|e| Refused::Clap(e.to_string()))?.params().map_err(Refused::Option)
}

/// The check a command line fails after parsing.
fn refused(r: Result<impl std::fmt::Debug, Refused>) -> OptionError {
    match r {
        Err(Refused::Option(e)) => e,
        other => panic!("expected a refused option, got {other:?}"),
    }
}

#[test]
fn ior_defaults_are_iors() {
    let p = ior(&[]).unwrap();
    assert_eq!((p.block, p.transfer, p.segments, p.reps), (1 << 20, 256 << 10, 1, 1));
    assert_eq!(p.test_file, "testFile");
    assert_eq!(p.apis, vec![Api::Pfs]);
    assert!(!p.file_per_proc && !p.fsync && !p.keep && !p.random && !p.reorder);
}

#[test]
fn neither_w_nor_r_means_both() {
    let p = ior(&[]).unwrap();
    assert!(p.write && p.read);
    let p = ior(&["-w"]).unwrap();
    assert!(p.write && !p.read);
    let p = ior(&["-r"]).unwrap();
    assert!(!p.write && p.read);
    let p = ior(&["-w", "-r"]).unwrap();
    assert!(p.write && p.read);
    // Checks are not accesses: -W -R alone still write and read.
    let p = ior(&["-W", "-R"]).unwrap();
    assert!(p.write && p.read && p.check_write && p.check_read);
}

#[test]
fn sizes_take_k_m_g() {
    let p = ior(&["-b", "2g", "-t", "4m"]).unwrap();
    assert_eq!((p.block, p.transfer), (2 << 30, 4 << 20));
    let p = ior(&["-b", "96k", "-t", "32k", "-s", "7"]).unwrap();
    assert_eq!((p.block, p.transfer, p.segments), (96 << 10, 32 << 10, 7));
    let p = ior(&["-b", "94016", "-t", "47008"]).unwrap();
    assert_eq!((p.block, p.transfer), (94016, 47008));
    assert!(ior(&["-b", "lots"]).is_err());
}

#[test]
fn ior_flags_and_their_meanings() {
    let p = ior(&["-a", "POSIX", "-F", "-C", "-e", "-z", "-k", "-i", "3", "-D", "5", "-o", "/d/f"]).unwrap();
    assert_eq!(p.apis, vec![Api::Posix]);
    assert!(p.file_per_proc && p.reorder && p.fsync && p.random && p.keep);
    assert_eq!((p.reps, p.stonewall, p.test_file.as_str()), (3, 5, "/d/f"));
    let p = ior(&["-a", "pfs,posix"]).unwrap();
    assert_eq!(p.apis, vec![Api::Pfs, Api::Posix]);
    assert!(ior(&["-a", "HDF5"]).is_err());
}

#[test]
fn ior_rejects_what_ior_rejects() {
    // blockSize must be a multiple of transferSize.
    let e = refused(ior(&["-b", "100k", "-t", "64k"]));
    assert_eq!(e, OptionError::BlockNotMultiple { block: 100 << 10, transfer: 64 << 10 });
    assert_eq!(refused(ior(&["-t", "0"])), OptionError::NotPositive("-b, -t and -s"));
    assert_eq!(refused(ior(&["-s", "0"])), OptionError::NotPositive("-b, -t and -s"));
    assert_eq!(refused(ior(&["-i", "0"])), OptionError::NotPositive("-i"));
    assert_eq!(refused(ior(&["--size", "1m"])), OptionError::SizeWithoutPreset, "--size needs a preset");
}

#[test]
fn ior_presets() {
    let p = ior(&["--preset", "ior-easy", "--size", "64m"]).unwrap();
    assert!(p.file_per_proc && p.fsync);
    assert_eq!((p.transfer, p.block, p.segments), (2 << 20, 64 << 20, 1));
    let p = ior(&["--preset", "ior-hard", "--size", "47008k"]).unwrap();
    assert!(!p.file_per_proc && p.fsync);
    assert_eq!((p.transfer, p.block, p.segments), (47008, 47008, 1024));
    // Explicit options override the preset.
    let p = ior(&["--preset", "ior-hard", "-s", "10"]).unwrap();
    assert_eq!(p.segments, 10);
    let a = IorArgs::try_parse_from(["pfs-ior", "--preset", "ior-easy"]).unwrap();
    assert_eq!(a.preset, Some(IorPreset::IorEasy));
    assert_eq!(a.params().unwrap().block, benchmarks::ior::EASY_SIZE_DEFAULT);
}

#[test]
fn ior_offsets_follow_iors_layout() {
    // Shared file: rank r's block of segment s at (s * ranks + r) * blockSize.
    let p = ior(&["-b", "8k", "-t", "4k", "-s", "2"]).unwrap();
    assert_eq!(benchmarks::ior::offsets(&p, 1, 4, 0), vec![8192, 12288, 40960, 45056]);
    // File per process: s * blockSize in the rank's own file.
    let p = ior(&["-b", "8k", "-t", "4k", "-s", "2", "-F"]).unwrap();
    assert_eq!(benchmarks::ior::offsets(&p, 3, 4, 0), vec![0, 4096, 8192, 12288]);
    // Random order: same offsets, reproducible by a reader.
    let p = ior(&["-b", "64k", "-t", "4k", "-s", "3", "-z"]).unwrap();
    let a = benchmarks::ior::offsets(&p, 2, 4, 0);
    assert_eq!(a, benchmarks::ior::offsets(&p, 2, 4, 0));
    let mut sorted = a.clone();
    sorted.sort();
    let q = ior(&["-b", "64k", "-t", "4k", "-s", "3"]).unwrap();
    assert_eq!(sorted, benchmarks::ior::offsets(&q, 2, 4, 0));
    assert_ne!(a, sorted);
}

#[test]
fn iors_number_format() {
    use benchmarks::ior::pp;
    assert_eq!(pp(0.000123), "0.000123  ");
    assert_eq!(pp(1595.714), "1595.71   ");
    assert_eq!(pp(12345.6), "12346     ");
}

#[test]
fn mdtest_options() {
    let p = mdtest(&["-n", "10", "-F", "-u", "-d", "/x", "-i", "2", "-w", "3901", "-e", "1k"]).unwrap();
    assert!(p.files && !p.dirs && p.unique);
    assert_eq!((p.items, p.dir.as_str(), p.iterations, p.write_bytes, p.read_bytes), (10, "/x", 2, 3901, 1024));
    let p = mdtest(&["-n", "5", "-D"]).unwrap();
    assert!(!p.files && p.dirs);
    let p = mdtest(&["-n", "5"]).unwrap();
    assert!(p.files && p.dirs, "neither -F nor -D: both");
    assert_eq!(refused(mdtest(&["-F", "-D"])), OptionError::Exclusive("-F", "-D"));
    assert_eq!(refused(mdtest(&["-n", "0"])), OptionError::NotPositive("-n"));
}

#[test]
fn mdtest_presets() {
    let p = mdtest(&["--preset", "mdtest-easy", "--size", "3k"]).unwrap();
    assert!(p.files && !p.dirs && p.unique);
    assert_eq!((p.items, p.write_bytes, p.read_bytes), (3072, 0, 0));
    let p = mdtest(&["--preset", "mdtest-hard", "--size", "100"]).unwrap();
    assert!(p.files && !p.dirs && !p.unique);
    assert_eq!((p.items, p.write_bytes, p.read_bytes), (100, 3901, 3901));
}

#[test]
fn posix_odirect_needs_aligned_sizes_for_posix() {
    let p = ior(&["-a", "POSIX", "--posix.odirect", "-t", "64k", "-b", "256k"]).unwrap();
    assert!(p.odirect);
    assert!(!ior(&["-a", "POSIX"]).unwrap().odirect);
    // An unaligned transfer size is refused, naming the option and the values.
    let e = refused(ior(&["-a", "POSIX", "--posix.odirect", "-t", "47008", "-b", "94016"]));
    assert_eq!(e, OptionError::Unaligned { align: 4096, transfer: 47008, block: 94016, hard_records: None });
    let e = refused(ior(&["-a", "PFS,POSIX", "--posix.odirect", "-t", "1000", "-b", "4000"]));
    assert!(matches!(e, OptionError::Unaligned { align: 4096, transfer: 1000, block: 4000, .. }), "{e}");
    // ior-hard's records cannot be aligned: the error says so.
    let e = refused(ior(&["-a", "POSIX", "--posix.odirect", "--preset", "ior-hard"]));
    assert!(matches!(e, OptionError::Unaligned { hard_records: Some(47008), .. }), "{e}");
    assert!(e.to_string().contains("ior-hard") && e.to_string().contains("47008"), "the message says why: {e}");
    assert!(ior(&["-a", "POSIX", "--posix.odirect", "--preset", "ior-easy"]).is_ok());
    // The PFS API ignores the option, so nothing to refuse.
    assert!(ior(&["-a", "PFS", "--posix.odirect", "--preset", "ior-hard"]).is_ok());
}

#[test]
fn cpu_flag() {
    assert!(ior(&["--cpu"]).unwrap().cpu);
    assert!(!ior(&[]).unwrap().cpu);
}
