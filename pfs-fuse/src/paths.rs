//! Inode numbers to pfs paths. The kernel names files by inode number (pfs's file id, the
//! root being 1 in both), while the pfs client's namespace calls take paths: this map holds
//! the path each inode was last seen under (lookups, creates, directory listings) and follows
//! renames, subtrees included.

use std::collections::HashMap;
use std::ffi::OsStr;

/// The path of every inode the kernel knows.
#[derive(Debug)]
pub struct Paths {
    by_ino: HashMap<u64, String>,
}

impl Default for Paths {
    fn default() -> Self {
        Paths { by_ino: HashMap::from([(ROOT, "/".to_string())]) }
    }
}

/// The root's inode number (FUSE's and pfs's).
pub const ROOT: u64 = 1;

impl Paths {
    /// The path of `ino`, if known.
    pub fn get(&self, ino: u64) -> Option<String> {
        self.by_ino.get(&ino).cloned()
    }

    /// The path of entry `name` of directory `parent`. Errors: ENOENT for an unknown parent,
    /// EINVAL for a name that is not UTF-8 or holds a slash.
    pub fn child(&self, parent: u64, name: &OsStr) -> Result<String, i32> {
        let dir = self.by_ino.get(&parent).ok_or(libc::ENOENT)?;
        let name = name.to_str().filter(|n| !n.contains('/') && !n.is_empty()).ok_or(libc::EINVAL)?;
        Ok(if dir == "/" { format!("/{name}") } else { format!("{dir}/{name}") })
    }

    /// `ino` is at `path`.
    pub fn learn(&mut self, ino: u64, path: String) {
        self.by_ino.insert(ino, path);
    }

    /// `path` was removed.
    pub fn removed(&mut self, path: &str) {
        self.by_ino.retain(|_, p| p != path);
    }

    /// `from` was renamed to `to`: it and everything under it move; whatever was at `to` is
    /// gone.
    pub fn renamed(&mut self, from: &str, to: &str) {
        self.removed(to);
        let under = format!("{from}/");
        for p in self.by_ino.values_mut() {
            if p == from {
                *p = to.to_string();
            } else if let Some(rest) = p.strip_prefix(&under) {
                *p = format!("{to}/{rest}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_and_renames_of_subtrees() {
        let mut p = Paths::default();
        assert_eq!(p.child(ROOT, OsStr::new("a")).unwrap(), "/a");
        p.learn(2, "/a".into());
        p.learn(3, "/a/b".into());
        p.learn(4, "/ab".into());
        assert_eq!(p.child(3, OsStr::new("c")).unwrap(), "/a/b/c");
        assert_eq!(p.child(9, OsStr::new("c")), Err(libc::ENOENT));
        assert_eq!(p.child(ROOT, OsStr::new("x/y")), Err(libc::EINVAL));
        p.renamed("/a", "/z");
        assert_eq!(
            (p.get(2).unwrap(), p.get(3).unwrap(), p.get(4).unwrap()),
            ("/z".into(), "/z/b".into(), "/ab".into())
        );
        p.renamed("/ab", "/z/b");
        assert_eq!(p.get(3), None, "replaced by the rename");
        assert_eq!(p.get(4).unwrap(), "/z/b");
        p.removed("/z/b");
        assert_eq!(p.get(4), None);
    }
}
