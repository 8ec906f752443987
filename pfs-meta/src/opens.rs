//! Which sessions have which files open, so that a file removed while open stays readable
//! (POSIX unlink semantics): the namespace keeps such a file as an orphan until the last
//! session that has it open closes it or ends.
//!
//! Not logged: each leadership term starts empty and the sessions of the log reclaim their
//! opens in the recovery window (see [`crate::tokens`], "Recovery"); the orphans nobody
//! reclaimed are reaped when it closes.

use pfs_common::token::SessionId;
use pfs_common::FileId;
use std::collections::{HashMap, HashSet};

/// Open files per session (with how many opens each) and sessions per file.
#[derive(Debug, Default)]
pub struct OpenTable {
    by_file: HashMap<FileId, HashMap<SessionId, u32>>,
    by_session: HashMap<SessionId, HashSet<FileId>>,
}

impl OpenTable {
    /// An empty table.
    pub fn new() -> OpenTable {
        OpenTable::default()
    }

    /// `session` opened `file` once more (a client counts the opens it closes, see
    /// [`pfs_common::wire::namespace::Closed`]).
    pub fn open(&mut self, session: SessionId, file: FileId) {
        *self.by_file.entry(file).or_default().entry(session).or_default() += 1;
        self.by_session.entry(session).or_default().insert(file);
    }

    /// `session` closed `file`, taking away `opens` of its opens (all that are left, if
    /// fewer). Returns true if nobody has it open any more.
    pub fn close(&mut self, session: SessionId, file: FileId, opens: u32) -> bool {
        let Some(sessions) = self.by_file.get_mut(&file) else { return true };
        let Some(count) = sessions.get_mut(&session) else { return false };
        *count = count.saturating_sub(opens);
        if *count > 0 {
            return false;
        }
        if let Some(files) = self.by_session.get_mut(&session) {
            files.remove(&file);
            if files.is_empty() {
                self.by_session.remove(&session);
            }
        }
        self.drop_holder(file, session)
    }

    /// `session` ended: every file it had open is closed. Returns the files nobody has open
    /// any more.
    pub fn end_session(&mut self, session: SessionId) -> Vec<FileId> {
        let files = self.by_session.remove(&session).unwrap_or_default();
        files.into_iter().filter(|f| self.drop_holder(*f, session)).collect()
    }

    fn drop_holder(&mut self, file: FileId, session: SessionId) -> bool {
        match self.by_file.get_mut(&file) {
            Some(sessions) => {
                sessions.remove(&session);
                if sessions.is_empty() {
                    self.by_file.remove(&file);
                    true
                } else {
                    false
                }
            }
            None => true,
        }
    }

    /// True if `session` has `file` open.
    pub fn has_open(&self, session: SessionId, file: FileId) -> bool {
        self.by_session.get(&session).is_some_and(|f| f.contains(&file))
    }

    /// True if some session has `file` open.
    pub fn is_open(&self, file: FileId) -> bool {
        self.by_file.contains_key(&file)
    }

    /// Number of files some session has open.
    pub fn open_files(&self) -> usize {
        self.by_file.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_close_or_session_end_frees() {
        let mut t = OpenTable::new();
        let (a, b) = (1 << 32 | 1, 1 << 32 | 2);
        t.open(a, FileId(5));
        t.open(a, FileId(5));
        t.open(b, FileId(5));
        t.open(a, FileId(6));
        assert!(t.is_open(FileId(5)));
        assert!(!t.close(a, FileId(5), 2), "b still has it open");
        assert!(t.is_open(FileId(5)) && !t.has_open(a, FileId(5)));
        assert_eq!(t.end_session(b), vec![FileId(5)]);
        assert!(!t.is_open(FileId(5)));
        assert_eq!(t.end_session(a), vec![FileId(6)]);
        assert_eq!(t.open_files(), 0);
        assert!(t.close(a, FileId(7), 1), "closing what was never open frees it");
    }

    #[test]
    fn a_close_takes_away_only_its_own_opens() {
        let mut t = OpenTable::new();
        let a = 1 << 32 | 1;
        // Two opens by one handle set, then a later open (another handle) that reaches the
        // table before the first set's close: the file stays open.
        t.open(a, FileId(5));
        t.open(a, FileId(5));
        t.open(a, FileId(5));
        assert!(!t.close(a, FileId(5), 2));
        assert!(t.has_open(a, FileId(5)));
        assert!(t.close(a, FileId(5), 1));
        assert!(!t.is_open(FileId(5)));
        // A close counting more than is left (a lost open answer) just closes.
        t.open(a, FileId(6));
        assert!(t.close(a, FileId(6), 3));
        assert_eq!(t.open_files(), 0);
    }
}
