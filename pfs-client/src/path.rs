//! pfs path helpers: pfs paths are absolute and `/`-separated (`/dir/file`); tools write them
//! as `pfs:/dir/file` where they must be told apart from local paths.

/// The `pfs:` prefix that marks a pfs path on the command line of `pfs-cp`.
pub const SCHEME: &str = "pfs:";

/// The pfs path in `arg` if it starts with `pfs:` (`pfs:/a/b` -> `/a/b`; `pfs:a` -> `/a`).
pub fn parse_pfs_arg(arg: &str) -> Option<String> {
    arg.strip_prefix(SCHEME).map(normalize)
}

/// Makes `p` absolute and drops empty and `.` components (`a//b/./c/` -> `/a/b/c`).
pub fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    format!("/{}", parts.join("/"))
}

/// `dir` joined with `name`.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of `p` (`/a/b` -> `b`; `/` -> ``).
pub fn file_name(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or("")
}

/// A pfs path argument: must be absolute; `pfs:` prefix accepted.
pub fn pfs_path(arg: &str) -> crate::Result<String> {
    let p = parse_pfs_arg(arg).unwrap_or_else(|| arg.to_string());
    if !p.starts_with('/') {
        return Err(crate::Error::Invalid(format!("{arg}: pfs paths are absolute, like /dir/file")));
    }
    Ok(normalize(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pfs_args_are_recognised() {
        assert_eq!(parse_pfs_arg("pfs:/a//b/"), Some("/a/b".to_string()));
        assert_eq!(parse_pfs_arg("pfs:x"), Some("/x".to_string()));
        assert_eq!(parse_pfs_arg("/local/file"), None);
        assert_eq!(normalize("/"), "/");
        assert_eq!(join("/", "f"), "/f");
        assert_eq!(join("/d", "f"), "/d/f");
        assert_eq!(file_name("/d/f"), "f");
    }
}
