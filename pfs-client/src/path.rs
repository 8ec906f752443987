//! pfs path helpers: pfs paths are absolute and `/`-separated (`/dir/file`); tools write them
//! as `pfs:/dir/file` where they must be told apart from local paths.
//!
//! pfs-meta resolves paths as Linux does: `.` and `..` are walked (`/missing/..` is NotFound,
//! `/file/..` NotDir), a trailing slash requires a directory (`/file/` is NotDir), names are
//! at most 255 bytes (NameTooLong). So these helpers only tidy what means the same either way
//! (repeated slashes) and keep the rest, trailing slash included, for pfs-meta to judge: a
//! client that dropped `/file/`'s slash would quietly accept what Linux refuses.

/// The `pfs:` prefix that marks a pfs path on the command line of `pfs-cp`.
pub const SCHEME: &str = "pfs:";

/// The pfs path in `arg` if it starts with `pfs:` (`pfs:/a//b/` -> `/a/b/`; `pfs:a` -> `/a`).
pub fn parse_pfs_arg(arg: &str) -> Option<String> {
    arg.strip_prefix(SCHEME).map(normalize)
}

/// Makes `p` absolute and collapses repeated slashes (`a//b/./c/` -> `/a/b/./c/`); `.`, `..`
/// and a trailing slash stay for pfs-meta to resolve (see the module documentation).
pub fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
    let mut norm = format!("/{}", parts.join("/"));
    if !parts.is_empty() && p.ends_with('/') {
        norm.push('/');
    }
    norm
}

/// True if `p` ends with a slash after a name (`/d/`), so it must name a directory; `/` does
/// not count.
pub fn has_trailing_slash(p: &str) -> bool {
    p.ends_with('/') && !p.trim_end_matches('/').is_empty()
}

/// `dir` joined with `name`.
pub fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The last component of `p`, trailing slashes ignored (`/a/b` and `/a/b/` -> `b`; `/` -> ``).
pub fn file_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or("")
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
        assert_eq!(parse_pfs_arg("pfs:/a//b/"), Some("/a/b/".to_string()));
        assert_eq!(parse_pfs_arg("pfs:x"), Some("/x".to_string()));
        assert_eq!(parse_pfs_arg("/local/file"), None);
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("//"), "/");
        assert_eq!(normalize("a//./b/../c//"), "/a/./b/../c/", "left for pfs-meta to resolve");
        assert!(has_trailing_slash("/d/") && has_trailing_slash("/d//"));
        assert!(!has_trailing_slash("/d") && !has_trailing_slash("/") && !has_trailing_slash("//"));
        assert_eq!(join("/", "f"), "/f");
        assert_eq!(join("/d", "f"), "/d/f");
        assert_eq!(join("/d/", "f"), "/d/f");
        assert_eq!(file_name("/d/f"), "f");
        assert_eq!(file_name("/d/f//"), "f");
        assert_eq!(file_name("/"), "");
        assert_eq!(pfs_path("pfs:/file/").unwrap(), "/file/", "the server must see the slash");
    }
}
