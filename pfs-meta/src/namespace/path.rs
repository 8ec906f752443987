//! Paths as Linux resolves them (path_resolution(7)), on the namespace's own tree.
//!
//! * A path is absolute, at most [`PATH_MAX_BYTES`] bytes, with names of at most
//!   [`NAME_MAX_BYTES`] bytes (NameTooLong) and no NUL byte.
//! * Repeated slashes count as one; `.` is the directory it is in; `..` is that directory's
//!   parent, and `/..` is `/`. Every component followed by another (`.` and `..` included)
//!   must be an existing directory: `/missing/../y` is NotFound, `/file/..` NotDir, exactly
//!   as Linux walks them (never a textual shortcut).
//! * A trailing slash requires a directory: `stat /file/` is NotDir.
//!
//! Changes whose last component is `.`, `..` or the root, or that carry a trailing slash,
//! fail with the error Linux gives for the same call. Found on Linux 6 (ext4 and tmpfs) with
//! the system calls themselves (`python3 -c 'import os; os.mkdir(...)'`), `d` a directory, `f`
//! a file, `nx` missing:
//!
//! | call | `d/.`, `d/..` | `/` | `f/.`, `f/..` | `nx/.`, `nx/..` | `f/` | `d/` | `nx/` |
//! | --- | --- | --- | --- | --- | --- | --- | --- |
//! | mkdir | EEXIST | EEXIST | ENOTDIR | ENOENT | EEXIST | EEXIST | created |
//! | open(O_CREAT) | EISDIR | EISDIR | ENOTDIR | ENOENT | EISDIR | EISDIR | EISDIR |
//! | open(O_CREAT\|O_EXCL) | EEXIST | EEXIST | ENOTDIR | ENOENT | EISDIR | EISDIR | EISDIR |
//! | unlink | EISDIR | EISDIR | ENOTDIR | ENOENT | ENOTDIR | EISDIR | ENOENT |
//! | rmdir | EINVAL (`.`), ENOTEMPTY (`..`) | EBUSY | ENOTDIR | ENOENT | ENOTDIR | removed | ENOENT |
//! | rename (either side) | EBUSY | EBUSY | ENOTDIR | ENOENT | ENOTDIR (source not a directory) | fine | ENOENT |
//!
//! pfs-meta follows that table: the checks of `Namespace::check_path_rules` run before
//! `prepare` looks an entry up by parent and name.

use super::{Inode, InodeKind, Namespace, Op, NAME_MAX_BYTES, PATH_MAX_BYTES};
use crate::error::{MetaError, Result};
use pfs_common::FileId;

/// One component of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component<'p> {
    /// `.`: the directory itself.
    Dot,
    /// `..`: the directory's parent (the root's is the root).
    DotDot,
    /// An entry's name.
    Name(&'p str),
}

/// An absolute path cut into components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedPath<'p> {
    /// In order, without the empty ones of repeated slashes; none for `/`.
    pub components: Vec<Component<'p>>,
    /// The path ends with a slash after a component, so it must name a directory.
    pub trailing_slash: bool,
}

impl<'p> ParsedPath<'p> {
    /// The last component if it is a name, and the components before it; `None` when the
    /// path ends in `.` or `..` or is the root.
    pub fn split_name(&self) -> Option<(&'p str, &[Component<'p>])> {
        match self.components.split_last() {
            Some((Component::Name(name), dirs)) => Some((name, dirs)),
            _ => None,
        }
    }
}

/// Cuts an absolute path into its components (see the module documentation).
///
/// Errors: NameTooLong for a path over [`PATH_MAX_BYTES`] or a name over [`NAME_MAX_BYTES`];
/// BadPath for a relative path or one containing NUL. The path is shortened for display.
pub fn parse(path: &str) -> Result<ParsedPath<'_>> {
    if path.len() > PATH_MAX_BYTES {
        return Err(MetaError::NameTooLong {
            path: shown(path),
            what: format!("a path of {} bytes, over the limit of {PATH_MAX_BYTES}", path.len()),
        });
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(MetaError::BadPath { path: shown(path), reason: "not absolute".into() });
    };
    if path.contains('\0') {
        return Err(MetaError::BadPath { path: shown(path), reason: "contains a NUL byte".into() });
    }
    let mut components = Vec::new();
    for part in rest.split('/') {
        components.push(match part {
            "" => continue,
            "." => Component::Dot,
            ".." => Component::DotDot,
            name if name.len() > NAME_MAX_BYTES => {
                return Err(MetaError::NameTooLong {
                    path: shown(path),
                    what: format!("a name of {} bytes, over the limit of {NAME_MAX_BYTES}", name.len()),
                })
            }
            name => Component::Name(name),
        });
    }
    let trailing_slash = !components.is_empty() && path.ends_with('/');
    Ok(ParsedPath { components, trailing_slash })
}

/// The names an absolute path leads through, `.` dropped and `..` cancelling the name before
/// it (`/` gives none). Textual: equal to the walk only for a path that resolves (where every
/// component before a `..` is a directory); use it to compare paths already resolved.
///
/// Errors: as [`parse`].
pub fn split_path(path: &str) -> Result<Vec<&str>> {
    let mut names = Vec::new();
    for c in parse(path)?.components {
        match c {
            Component::Name(n) => names.push(n),
            Component::Dot => {}
            Component::DotDot => {
                names.pop();
            }
        }
    }
    Ok(names)
}

/// Errors with NameTooLong if `after` (a readdir position, the last name of the previous
/// page of directory `path`) is longer than any name can be.
pub fn check_readdir_after(path: &str, after: &str) -> Result<()> {
    if after.len() > NAME_MAX_BYTES {
        return Err(MetaError::NameTooLong {
            path: shown(path),
            what: format!(
                "a readdir position (`after`) of {} bytes, over the name limit of {NAME_MAX_BYTES}",
                after.len()
            ),
        });
    }
    Ok(())
}

/// `path` cut to its first 64 bytes for messages (a path may be 4 KiB, a bad one more).
fn shown(path: &str) -> String {
    let mut end = path.len().min(64);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    if end < path.len() {
        format!("{}...", &path[..end])
    } else {
        path.to_string()
    }
}

/// `components` written as a path, for naming where a walk stopped.
fn prefix(components: &[Component<'_>]) -> String {
    let mut s = String::new();
    for c in components {
        s.push('/');
        s.push_str(match c {
            Component::Dot => ".",
            Component::DotDot => "..",
            Component::Name(n) => n,
        });
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

impl Namespace {
    /// Follows `components` (of `path`, for messages) from the root. No parent pointers are
    /// kept: the directories passed on the way are a stack, so `..` pops it.
    ///
    /// Errors: NotFound (a name missing), NotDir (a component followed by another is not a
    /// directory; the message names it).
    pub(super) fn walk(&self, path: &str, components: &[Component<'_>]) -> Result<&Inode> {
        self.walk_traced(path, components, None)
    }

    /// [`Namespace::walk`], adding to `read` the id of every inode it reads, whatever the
    /// outcome (a name found missing was read in its directory, which is added).
    fn walk_traced(
        &self,
        path: &str,
        components: &[Component<'_>],
        mut read: Option<&mut Vec<FileId>>,
    ) -> Result<&Inode> {
        let mut note = |id: FileId| {
            if let Some(r) = read.as_deref_mut() {
                r.push(id);
            }
        };
        note(FileId::ROOT);
        let mut dirs: Vec<&Inode> = vec![self.inode(FileId::ROOT)?];
        for (i, c) in components.iter().enumerate() {
            let cur = *dirs.last().expect("the root is never popped");
            if cur.kind != InodeKind::Dir {
                return Err(MetaError::NotDir { path: format!("{} (in {path})", prefix(&components[..i])) });
            }
            match c {
                Component::Dot => {}
                Component::DotDot => {
                    if dirs.len() > 1 {
                        dirs.pop();
                    }
                }
                Component::Name(name) => {
                    let id = *cur.entries.get(*name).ok_or_else(|| MetaError::NotFound { path: path.to_string() })?;
                    note(id);
                    dirs.push(self.inode(id)?);
                }
            }
        }
        Ok(dirs.last().expect("the root is never popped"))
    }

    /// [`Namespace::walk`] to a directory. Errors: as `walk`; NotDir if it ends at a file.
    fn walk_dir(&self, path: &str, components: &[Component<'_>]) -> Result<&Inode> {
        let dir = self.walk(path, components)?;
        if dir.kind != InodeKind::Dir {
            return Err(MetaError::NotDir { path: format!("{} (in {path})", prefix(components)) });
        }
        Ok(dir)
    }

    /// Resolves an absolute path to its inode.
    ///
    /// Errors: BadPath, NameTooLong, NotFound, NotDir (a component followed by another, or a
    /// path with a trailing slash, is not a directory).
    pub(super) fn resolve_path(&self, path: &str, read: Option<&mut Vec<FileId>>) -> Result<&Inode> {
        let p = parse(path)?;
        let inode = self.walk_traced(path, &p.components, read)?;
        if p.trailing_slash && inode.kind != InodeKind::Dir {
            return Err(MetaError::NotDir { path: path.to_string() });
        }
        Ok(inode)
    }

    /// The parent directory of `path` and the last component's name. A trailing slash is
    /// left to the caller (see [`Namespace::check_path_rules`]).
    ///
    /// Errors: BadPath (a path ending in `.`, `..` or the root: the callers check those
    /// first, with the error Linux gives), NameTooLong, NotFound, NotDir.
    pub(super) fn parent_of<'p>(&self, path: &'p str) -> Result<(&Inode, &'p str)> {
        let p = parse(path)?;
        let Some((name, dirs)) = p.split_name() else {
            return Err(MetaError::BadPath {
                path: shown(path),
                reason: "it must end in a name, not in `.`, `..` or the root".into(),
            });
        };
        Ok((self.walk_dir(path, dirs)?, name))
    }

    /// Linux's answers (see the module documentation) for a change whose path ends in `.`,
    /// `..` or the root, or with a trailing slash; `Ok` when `prepare` may go on and look the
    /// entry up by parent and name.
    ///
    /// Errors: as [`parse`]; NotFound and NotDir from walking the path; Exists, IsDir,
    /// NotDir, NotEmpty, Invalid and Busy as the table gives them.
    pub(super) fn check_path_rules(&self, op: &Op) -> Result<()> {
        match op {
            Op::Mkdir { path, .. } | Op::MakeNode { path, .. } | Op::Link { path, .. } => {
                let p = parse(path)?;
                if p.split_name().is_none() {
                    self.walk(path, &p.components)?;
                    return Err(MetaError::Exists { path: path.clone() });
                }
            }
            Op::Create { path, exclusive, .. } => {
                let p = parse(path)?;
                match p.split_name() {
                    None => {
                        self.walk(path, &p.components)?;
                        return Err(match exclusive {
                            true => MetaError::Exists { path: path.clone() },
                            false => MetaError::IsDir { path: path.clone() },
                        });
                    }
                    // A file cannot be named with a trailing slash, existing or not.
                    Some((_, dirs)) if p.trailing_slash => {
                        self.walk_dir(path, dirs)?;
                        return Err(MetaError::IsDir { path: path.clone() });
                    }
                    Some(_) => {}
                }
            }
            Op::Unlink { path, .. } => {
                let p = parse(path)?;
                match p.split_name() {
                    None => {
                        self.walk(path, &p.components)?;
                        return Err(MetaError::IsDir { path: path.clone() });
                    }
                    Some((name, dirs)) if p.trailing_slash => {
                        // Missing stays NotFound and a directory IsDir, as `prepare` answers.
                        if self.child(self.walk_dir(path, dirs)?, name).is_some_and(|t| t.kind != InodeKind::Dir) {
                            return Err(MetaError::NotDir { path: path.clone() });
                        }
                    }
                    Some(_) => {}
                }
            }
            Op::Rmdir { path, .. } => {
                // A trailing slash changes nothing: rmdir wants a directory anyway.
                let p = parse(path)?;
                if p.split_name().is_none() {
                    let dir = self.walk(path, &p.components)?;
                    return Err(match p.components.last() {
                        Some(Component::Dot) => MetaError::Invalid(format!(
                            "{path}: `.` cannot be removed; remove the directory by its name"
                        )),
                        Some(Component::DotDot) => {
                            MetaError::NotEmpty { path: path.clone(), entries: dir.entries.len() as u64 }
                        }
                        _ => MetaError::Busy {
                            path: path.clone(),
                            reason: "the root directory cannot be removed".into(),
                        },
                    });
                }
            }
            Op::Rename { from, to, .. } => {
                let (pf, pt) = (parse(from)?, parse(to)?);
                // Both parents are walked first, as Linux does.
                for (path, p) in [(from, &pf), (to, &pt)] {
                    match p.split_name() {
                        Some((_, dirs)) => self.walk_dir(path, dirs).map(drop)?,
                        None => self.walk(path, &p.components).map(drop)?,
                    }
                }
                let Some((name, dirs)) = pf.split_name() else {
                    return Err(MetaError::Busy {
                        path: from.clone(),
                        reason: "`.`, `..` and `/` cannot be renamed".into(),
                    });
                };
                if pt.split_name().is_none() {
                    return Err(MetaError::Busy {
                        path: to.clone(),
                        reason: "`.`, `..` and `/` cannot be replaced by a rename".into(),
                    });
                }
                if pf.trailing_slash || pt.trailing_slash {
                    // A trailing slash on either side requires the source to be a directory.
                    match self.child(self.walk_dir(from, dirs)?, name) {
                        None => return Err(MetaError::NotFound { path: from.clone() }),
                        Some(s) if s.kind != InodeKind::Dir => {
                            return Err(MetaError::NotDir { path: from.clone() });
                        }
                        Some(_) => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn child(&self, dir: &Inode, name: &str) -> Option<&Inode> {
        dir.entries.get(name).and_then(|id| self.inodes.get(id))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Context, Decision, LayoutChoice, LayoutPolicy, Mutation};
    use super::*;
    use pfs_common::{ErrorCode, ServerId};

    const UP: [ServerId; 1] = [ServerId(1)];

    fn prepare(ns: &Namespace, op: Op) -> Result<Decision> {
        ns.prepare(&op, &Context { now_ns: 1, up_servers: &UP, is_open: &|_| false })
    }

    fn run(ns: &mut Namespace, op: Op) -> Result<()> {
        if let Decision::Mutate(m) = prepare(ns, op)? {
            ns.apply(&m)?;
        }
        ns.check_invariants().unwrap();
        Ok(())
    }

    fn mkdir(p: &str) -> Op {
        Op::Mkdir { path: p.into(), attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o755, uid: 0, gid: 0 } }
    }
    fn create(p: &str, exclusive: bool) -> Op {
        Op::Create {
            path: p.into(),
            layout: LayoutChoice::default(),
            exclusive,
            attrs: pfs_common::wire::namespace::NewAttrs { mode: 0o644, uid: 0, gid: 0 },
        }
    }
    fn unlink(p: &str) -> Op {
        Op::Unlink { path: p.into(), expected_generation: None }
    }
    fn rmdir(p: &str) -> Op {
        Op::Rmdir { path: p.into(), expected_generation: None }
    }
    fn rename(from: &str, to: &str) -> Op {
        Op::Rename { from: from.into(), to: to.into(), expected_generation: None, no_replace: false }
    }

    /// `/d` (holding `/d/g` and the empty `/d/e`) and the file `/f`.
    fn tree() -> Namespace {
        let mut ns = Namespace::new(LayoutPolicy::default());
        for op in [mkdir("/d"), mkdir("/d/e"), create("/d/g", true), create("/f", true)] {
            run(&mut ns, op).unwrap();
        }
        ns
    }

    fn code(r: Result<impl std::fmt::Debug>) -> ErrorCode {
        r.unwrap_err().code()
    }

    #[test]
    fn paths_parse_like_linux() {
        use Component::*;
        let p = parse("//a/./b//../c/").unwrap();
        assert_eq!(p.components, vec![Name("a"), Dot, Name("b"), DotDot, Name("c")]);
        assert!(p.trailing_slash);
        assert_eq!(parse("/").unwrap(), ParsedPath { components: vec![], trailing_slash: false });
        assert_eq!(parse("//").unwrap().components, vec![]);
        assert_eq!(split_path("/a/./b/../c/").unwrap(), vec!["a", "c"]);
        assert_eq!(split_path("/../..").unwrap(), Vec::<&str>::new());
        for bad in ["", "a/b", "/a\0b"] {
            assert!(matches!(parse(bad), Err(MetaError::BadPath { .. })), "{bad:?}");
        }
        let e = parse(&format!("/d/{}", "x".repeat(256))).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NameTooLong);
        assert!(matches!(&e, MetaError::NameTooLong { path, .. } if path.len() <= 67), "shortened: {e}");
        assert!(e.to_string().contains("256 bytes") && e.to_string().contains("255"), "{e}");
        parse(&format!("/{}", "x".repeat(255))).unwrap();
        assert_eq!(parse(&"/abc".repeat(1100)).unwrap_err().code(), ErrorCode::NameTooLong);
    }

    #[test]
    fn resolution_walks_dots_and_checks_trailing_slashes() {
        let ns = tree();
        let id = |p: &str| ns.resolve(p).map(|i| i.id);
        let (d, f) = (id("/d").unwrap(), id("/f").unwrap());
        assert_eq!(id("/d/../f").unwrap(), f);
        assert_eq!(id("//d//./e/../../f").unwrap(), f);
        assert_eq!(code(id("/d/g/../../f")), ErrorCode::NotDir, "g is a file: no `..` out of it");
        assert_eq!(id("/../../d").unwrap(), d, "the parent of / is /");
        assert_eq!(id("/d/").unwrap(), d);
        assert_eq!(id("/d/e/..").unwrap(), d);
        assert_eq!(id("/d/.").unwrap(), d);
        assert!(matches!(id("/nonexistent/../f"), Err(MetaError::NotFound { path }) if path == "/nonexistent/../f"));
        assert!(matches!(id("/f/../d"), Err(MetaError::NotDir { path }) if path == "/f (in /f/../d)"));
        assert!(matches!(id("/f/"), Err(MetaError::NotDir { path }) if path == "/f/"));
        assert_eq!(code(id("/f/.")), ErrorCode::NotDir);
        assert_eq!(code(id("/d/g/")), ErrorCode::NotDir);
        assert_eq!(code(id("/missing/")), ErrorCode::NotFound);
        let (page, _) = ns.readdir("/d/", None, 10).unwrap();
        assert_eq!(page.len(), 2);
        let e = ns.readdir("/d", Some(&"z".repeat(256)), 10).unwrap_err();
        assert_eq!(e.code(), ErrorCode::NameTooLong, "{e}");
        assert!(e.to_string().contains("after"), "{e}");
    }

    #[test]
    fn changes_at_dots_the_root_and_trailing_slashes_fail_as_on_linux() {
        let ns = tree();
        use ErrorCode::*;
        let cases: &[(Op, ErrorCode)] = &[
            (mkdir("/d/."), Exists),
            (mkdir("/d/.."), Exists),
            (mkdir("/"), Exists),
            (mkdir("/f/."), NotDir),
            (mkdir("/nx/.."), NotFound),
            (mkdir("/f/"), Exists),
            (create("/d/.", false), IsDir),
            (create("/d/..", true), Exists),
            (create("/", false), IsDir),
            (create("/f/.", false), NotDir),
            (create("/nx/.", true), NotFound),
            (create("/f/", false), IsDir),
            (create("/new/", true), IsDir),
            (create("/d/", true), IsDir),
            (create("/nx/new/", true), NotFound),
            (unlink("/d/."), IsDir),
            (unlink("/d/.."), IsDir),
            (unlink("/"), IsDir),
            (unlink("/f/.."), NotDir),
            (unlink("/nx/."), NotFound),
            (unlink("/f/"), NotDir),
            (unlink("/d/"), IsDir),
            (unlink("/nx/"), NotFound),
            (rmdir("/d/e/."), Invalid),
            (rmdir("/d/e/.."), NotEmpty),
            (rmdir("/"), Busy),
            (rmdir("/f/."), NotDir),
            (rmdir("/nx/.."), NotFound),
            (rmdir("/f/"), NotDir),
            (rmdir("/nx/"), NotFound),
            (rename("/d/.", "/x"), Busy),
            (rename("/d/..", "/x"), Busy),
            (rename("/f", "/d/."), Busy),
            (rename("/f", "/d/.."), Busy),
            (rename("/", "/x"), Busy),
            (rename("/d", "/"), Busy),
            (rename("/f/", "/f3"), NotDir),
            (rename("/f", "/f3/"), NotDir),
            (rename("/nx/", "/f3"), NotFound),
            (rename("/nx", "/f3/"), NotFound),
            (rename("/f/.", "/f3"), NotDir),
            (rename("/nx/..", "/f3"), NotFound),
            (rename("/d/g", "/f/x"), NotDir),
            (rename("/d/", "/f"), NotDir),
        ];
        for (op, want) in cases {
            let got = prepare(&ns, op.clone());
            assert!(matches!(&got, Err(e) if e.code() == *want), "{op:?}: {got:?}, want {want:?}");
        }
    }

    #[test]
    fn changes_through_dots_and_slashes_land_where_linux_puts_them() {
        let mut ns = tree();
        run(&mut ns, mkdir("/d/../x/")).unwrap();
        let x = ns.resolve("/x").unwrap();
        assert_eq!(x.kind, InodeKind::Dir);
        run(&mut ns, create("/x/./../d/e/../y", true)).unwrap();
        assert_eq!(ns.resolve("/d/y").unwrap().kind, InodeKind::File);
        // A directory may be renamed with trailing slashes on either side.
        run(&mut ns, rename("/x/", "/d/e/z/")).unwrap();
        assert_eq!(ns.resolve("/d/e/z").unwrap().kind, InodeKind::Dir);
        assert_eq!(code(ns.resolve("/x")), ErrorCode::NotFound);
        // Onto itself, spelt differently, changes nothing; into itself is Invalid; onto `..` Busy.
        assert_eq!(prepare(&ns, rename("/d/e", "/d/./e/")).unwrap(), Decision::Unchanged(None));
        assert_eq!(code(prepare(&ns, rename("/d/e", "/d/e/z/.."))), ErrorCode::Busy);
        assert_eq!(code(prepare(&ns, rename("/d", "/d/e/z/../w"))), ErrorCode::Invalid);
        // Not through `..` of a name that is gone.
        run(&mut ns, rename("/d/e/z/../../y", "/d/e/z/../y2")).unwrap();
        assert_eq!(ns.resolve("/d/e/y2").unwrap().kind, InodeKind::File);
        run(&mut ns, unlink("/d/./e/y2")).unwrap();
        run(&mut ns, rmdir("/d/e/z/")).unwrap();
        assert_eq!(ns.resolve("/d/e").unwrap().entries.len(), 0);
        assert!(
            matches!(prepare(&ns, mkdir("/d/e/new")), Ok(Decision::Mutate(Mutation::Mkdir { name, .. })) if name == "new")
        );
    }
}
