//! Editing the TOML users file (`portcullis user add|passwd|del|unlock|import-htpasswd`).
//!
//! Edits go through `toml_edit`, so comments, ordering and formatting of
//! everything not touched survive. A save renders the document, checks that
//! the result is a users file the server accepts, and replaces the file
//! atomically: a temporary file in the same directory is written, flushed to
//! disk and renamed over the old one, so a reader (or a crash) sees either
//! the old file or the new one, never half of one. A new file is readable by
//! its owner only; an existing file keeps its permissions.

use std::io::Write;
use std::path::{Path, PathBuf};

use toml_edit::{Array, DocumentMut, Item, Table, TableLike, value};

use crate::auth::users::{
    Users, UsersError, check_name, check_path_name, fallback_stamp, new_stamp,
};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "{0}: not a TOML users file (the name does not end in .toml): an htpasswd file is read but never written; import it with `portcullis user import-htpasswd`"
    )]
    Htpasswd(PathBuf),
    #[error("{path}: `users` must be a table of users")]
    Shape { path: PathBuf },
    #[error("{path}: user `{name}` already exists")]
    Exists { path: PathBuf, name: String },
    #[error("{path}: no user `{name}`")]
    Unknown { path: PathBuf, name: String },
    #[error(
        "invalid group name `{0}`: 1–128 characters, no spaces, `:`, `/`, `*` or control characters"
    )]
    Group(String),
    #[error("{path}: changed by someone else while being edited; nothing was written, try again")]
    Changed { path: PathBuf },
    #[error(transparent)]
    Users(#[from] UsersError),
}

/// Group names follow the rules of user names: in particular no `/` or
/// `*`, which could widen a `${group}` placeholder in a policy.
pub fn check_group(name: &str) -> Result<(), EditError> {
    check_name(name).map_err(|_| EditError::Group(name.to_owned()))
}

/// A users file opened for editing.
pub struct UsersFile {
    /// The path as given, for messages.
    path: PathBuf,
    /// Where the file is written: the target when the given path is a
    /// symbolic link, so that the link survives the rename.
    target: PathBuf,
    /// The text as read (`None`: no file yet), to notice a concurrent edit.
    original: Option<String>,
    doc: DocumentMut,
}

impl UsersFile {
    /// Opens `path` for editing; a missing file is an empty one. Refuses an
    /// htpasswd file (any name not ending in `.toml`), which only `Users::load`
    /// reads.
    pub fn open(path: &Path) -> Result<Self, EditError> {
        if path.extension().is_none_or(|e| e != "toml") {
            return Err(EditError::Htpasswd(path.to_owned()));
        }
        let io = |source| EditError::Io {
            path: path.to_owned(),
            source,
        };
        let (target, original) = match std::fs::read_to_string(path) {
            Ok(text) => (std::fs::canonicalize(path).map_err(io)?, Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (path.to_owned(), None),
            Err(e) => return Err(io(e)),
        };
        let path = path.to_owned();
        let doc = match &original {
            Some(text) => text.parse::<DocumentMut>().map_err(|e| EditError::Syntax {
                path: path.clone(),
                line: e
                    .span()
                    .map_or(1, |s| crate::config::line_col(text, s.start).0),
                message: e.message().trim_end().to_owned(),
            })?,
            None => DocumentMut::new(),
        };
        let file = Self {
            path,
            target,
            original,
            doc,
        };
        // Refuse a document whose `users` is not a table now, before anyone
        // is asked for a password.
        file.users()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn exists(&self) -> bool {
        self.original.is_some()
    }

    /// Whether `name` is a user of the file.
    pub fn contains(&self, name: &str) -> bool {
        self.users()
            .ok()
            .flatten()
            .is_some_and(|users| users.contains_key(name))
    }

    /// Whether `name` is a robot account of the file.
    pub fn is_robot(&self, name: &str) -> bool {
        let users = self.users().ok().flatten();
        let entry = users.and_then(|users| users.get(name)?.as_table_like());
        entry
            .and_then(|e| e.get("robot")?.as_bool())
            .unwrap_or(false)
    }

    /// Adds a user with a password hash (argon2id, or bcrypt when imported)
    /// and groups, under a fresh identity stamp (so that refresh tokens of
    /// an earlier user of the same name stay void); refuses a name that is
    /// taken or invalid (a new name must be a repository path component).
    pub fn add(&mut self, name: &str, hash: &str, groups: &[String]) -> Result<(), EditError> {
        self.add_entry(name, Some(hash), groups)
    }

    /// Adds a robot account: no password, groups, a fresh stamp. It logs in
    /// only with its personal access tokens.
    pub fn add_robot(&mut self, name: &str, groups: &[String]) -> Result<(), EditError> {
        self.add_entry(name, None, groups)
    }

    fn add_entry(
        &mut self,
        name: &str,
        hash: Option<&str>,
        groups: &[String],
    ) -> Result<(), EditError> {
        check_path_name(name)?;
        for group in groups {
            check_group(group)?;
        }
        if self.contains(name) {
            return Err(EditError::Exists {
                path: self.path.clone(),
                name: name.to_owned(),
            });
        }
        let mut entry = Table::new();
        match hash {
            Some(hash) => entry.insert("password", value(hash)),
            None => entry.insert("robot", value(true)),
        };
        if !groups.is_empty() {
            entry.insert("groups", value(groups.iter().collect::<Array>()));
        }
        entry.insert("stamp", value(new_stamp()));
        self.users_mut()?.insert(name, Item::Table(entry));
        Ok(())
    }

    /// Replaces the password of an existing user (groups and any comments
    /// stay) and gives it a fresh stamp: its refresh tokens are void.
    pub fn set_password(&mut self, name: &str, hash: &str) -> Result<(), EditError> {
        self.replace_hash(name, hash)?;
        self.entry_mut(name)?.insert("stamp", value(new_stamp()));
        Ok(())
    }

    /// The same password under a new hash (current parameters), when the
    /// user still has `old`: the identity is unchanged, so the stamp stays
    /// (an entry without one gets the stamp it stood for, its fallback from
    /// `old`). `false` when the hash is no longer `old`: someone changed it.
    pub fn rehash(&mut self, name: &str, old: &str, new: &str) -> Result<bool, EditError> {
        let entry = self.entry_mut(name)?;
        if entry.get("password").and_then(Item::as_str) != Some(old) {
            return Ok(false);
        }
        if !entry.contains_key("stamp") {
            entry.insert("stamp", value(fallback_stamp(old)));
        }
        self.replace_hash(name, new)?;
        Ok(true)
    }

    /// Records that the lockout of `name` was cleared at `at` (seconds since
    /// the epoch): running servers forget its failures up to then when they
    /// reload the file. Password and stamp stay, so its tokens stay valid.
    pub fn unlock(&mut self, name: &str, at: u64) -> Result<(), EditError> {
        let entry = self.entry_mut(name)?;
        let mut new = toml_edit::Value::from(i64::try_from(at).unwrap_or(i64::MAX));
        // An earlier unlock's line is replaced in place, its comment kept.
        if let Some(old) = entry.get("unlocked_at").and_then(Item::as_value) {
            *new.decor_mut() = old.decor().clone();
        }
        entry.insert("unlocked_at", Item::Value(new));
        Ok(())
    }

    fn entry_mut(&mut self, name: &str) -> Result<&mut dyn TableLike, EditError> {
        let unknown = self.unknown(name);
        self.users_mut()?
            .get_mut(name)
            .and_then(Item::as_table_like_mut)
            .ok_or(unknown)
    }

    fn replace_hash(&mut self, name: &str, hash: &str) -> Result<(), EditError> {
        let unknown = self.unknown(name);
        let users = self.users_mut()?;
        let entry = users
            .get_mut(name)
            .and_then(Item::as_table_like_mut)
            .ok_or(unknown)?;
        let mut new = toml_edit::Value::from(hash);
        // Keep a comment at the end of the old line (`password = "…" # note`).
        if let Some(old) = entry.get("password").and_then(Item::as_value) {
            *new.decor_mut() = old.decor().clone();
        }
        entry.insert("password", Item::Value(new));
        Ok(())
    }

    /// Removes a user (with the comment lines right above its table).
    pub fn remove(&mut self, name: &str) -> Result<(), EditError> {
        let unknown = self.unknown(name);
        self.users_mut()?.remove(name).map(|_| ()).ok_or(unknown)
    }

    /// The document as it would be written.
    pub fn render(&self) -> String {
        self.doc.to_string()
    }

    /// Writes the edited file atomically, after checking that the server
    /// would accept it and that nobody changed the file since it was opened.
    pub fn save(&self) -> Result<(), EditError> {
        let text = self.render();
        Users::from_toml(&self.path.display().to_string(), &text)?;
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| EditError::Io { path, source }
        };
        let dir = match self.target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = self
            .target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // An existing file keeps its permissions; a new one holds password
        // hashes, so only its owner may read it.
        #[cfg(unix)]
        let mode = match std::fs::metadata(&self.target) {
            Ok(meta) => std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777,
            Err(_) => 0o600,
        };
        let tmp = dir.join(format!(
            ".{file_name}.{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let written = (|| {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
            let mut file = options.open(&tmp)?;
            // `mode` at creation is filtered by the umask; set it exactly.
            #[cfg(unix)]
            file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            // Named by the file being replaced: the temporary name means
            // nothing to the reader (a missing directory, say).
            return Err(io(&self.path)(e));
        }
        // Optimistic check against a concurrent edit (another `portcullis
        // user` run, or a person with an editor): the window left between
        // this read and the rename is tiny, where without it a whole edit
        // could silently undo another.
        let now = match std::fs::read_to_string(&self.target) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io(&self.target)(e));
            }
        };
        if now != self.original {
            let _ = std::fs::remove_file(&tmp);
            return Err(EditError::Changed {
                path: self.path.clone(),
            });
        }
        if let Err(e) = std::fs::rename(&tmp, &self.target) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&self.target)(e));
        }
        // The rename is durable only once the directory entry is.
        #[cfg(unix)]
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&dir))?;
        Ok(())
    }

    fn unknown(&self, name: &str) -> EditError {
        EditError::Unknown {
            path: self.path.clone(),
            name: name.to_owned(),
        }
    }

    /// The `users` table, `None` when the document has none yet.
    fn users(&self) -> Result<Option<&dyn TableLike>, EditError> {
        match self.doc.get("users") {
            None => Ok(None),
            Some(item) => item.as_table_like().map(Some).ok_or(EditError::Shape {
                path: self.path.clone(),
            }),
        }
    }

    fn users_mut(&mut self) -> Result<&mut dyn TableLike, EditError> {
        let shape = EditError::Shape {
            path: self.path.clone(),
        };
        if !self.doc.contains_key("users") {
            // `[users.NAME]` headers only: no bare `[users]` line.
            let mut users = Table::new();
            users.set_implicit(true);
            self.doc.insert("users", Item::Table(users));
        }
        self.doc
            .get_mut("users")
            .and_then(Item::as_table_like_mut)
            .ok_or(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2b$04$abcdefghijklmnopqrstuu5Fmy2MvwPa0ZL1QyQ0jS3b8ljSdXwgy";

    fn file(text: &str) -> UsersFile {
        UsersFile {
            path: PathBuf::from("users.toml"),
            target: PathBuf::from("users.toml"),
            original: Some(text.to_owned()),
            doc: text.parse().unwrap(),
        }
    }

    #[test]
    fn add_to_an_empty_document_writes_one_table_per_user() {
        let mut f = file("");
        f.add("alice", HASH, &["admins".into(), "dev".into()])
            .unwrap();
        f.add("bob.smith", HASH, &[]).unwrap();
        let text = f.render();
        assert!(!text.contains("[users]\n"), "{text}");
        assert!(text.contains("[users.alice]\n"), "{text}");
        assert!(text.contains("groups = [\"admins\", \"dev\"]"), "{text}");
        assert!(text.contains("[users.\"bob.smith\"]"), "{text}");
        let users = Users::from_toml("users.toml", &text).unwrap();
        assert_eq!(users.len(), 2);
    }

    #[test]
    fn passwd_renews_the_stamp_and_rehash_keeps_it() {
        let mut f = file("[users.alice]\npassword = \"x\" # note\n");
        let fallback = fallback_stamp("x");
        assert!(
            !f.rehash("alice", "other", HASH).unwrap(),
            "not the old hash"
        );
        assert!(f.rehash("alice", "x", HASH).unwrap());
        let text = f.render();
        let users = Users::from_toml("u.toml", &text).unwrap();
        assert_eq!(users.account("alice").unwrap().stamp, fallback, "{text}");
        assert!(text.contains("\" # note"), "{text}");
        f.set_password("alice", HASH).unwrap();
        let users = Users::from_toml("u.toml", &f.render()).unwrap();
        assert_ne!(users.account("alice").unwrap().stamp, fallback);
    }

    #[test]
    fn inline_and_dotted_forms_are_edited_in_place() {
        let mut f = file("[users]\nalice = { password = \"x\", groups = [\"a\"] }\n");
        f.set_password("alice", HASH).unwrap();
        let text = f.render();
        assert!(text.contains(&format!("password = \"{HASH}\"")), "{text}");
        assert!(text.contains("groups = [\"a\"]"), "{text}");
        let mut f = file("users.bob.password = \"x\"\n");
        f.set_password("bob", HASH).unwrap();
        assert!(Users::from_toml("u.toml", &f.render()).is_ok());
        f.remove("bob").unwrap();
        assert!(!f.contains("bob"));
    }

    #[test]
    fn wrong_shapes_and_names_are_refused() {
        let f = UsersFile {
            path: PathBuf::from("users.toml"),
            target: PathBuf::from("users.toml"),
            original: None,
            doc: "users = 5\n".parse().unwrap(),
        };
        assert!(matches!(f.users(), Err(EditError::Shape { .. })));
        let mut f = file("");
        assert!(matches!(
            f.add("a b", HASH, &[]),
            Err(EditError::Users(UsersError::Name(_)))
        ));
        assert!(matches!(
            f.add("Frank", HASH, &[]),
            Err(EditError::Users(UsersError::NotPath { .. }))
        ));
        assert!(matches!(
            f.add("a", HASH, &["x/y".into()]),
            Err(EditError::Group(_))
        ));
        assert!(matches!(
            f.set_password("nobody", HASH),
            Err(EditError::Unknown { .. })
        ));
        assert!(matches!(f.remove("nobody"), Err(EditError::Unknown { .. })));
    }

    #[test]
    fn unlock_records_the_time_and_keeps_password_and_stamp() {
        let mut f = file(&format!(
            "[users.alice]\npassword = {HASH:?}\nstamp = \"s\"\n"
        ));
        f.unlock("alice", 1_000).unwrap();
        f.unlock("alice", 2_000).unwrap();
        let text = f.render();
        assert_eq!(text.matches("unlocked_at").count(), 1, "{text}");
        let users = Users::from_toml("u.toml", &text).unwrap();
        assert_eq!(users.unlocks().collect::<Vec<_>>(), [("alice", 2_000)]);
        assert_eq!(users.account("alice").unwrap().stamp, "s");
        assert!(matches!(
            f.unlock("nobody", 1),
            Err(EditError::Unknown { .. })
        ));
    }

    #[test]
    fn comments_survive_and_new_users_come_last() {
        let text = "# Users of the registry.\n\n# Alice runs it.\n[users.alice]\npassword = \"x\" # rotated yearly\ngroups = [\"admins\"]\n\n# The end.\n";
        let mut f = file(text);
        f.add("bob", HASH, &[]).unwrap();
        f.set_password("alice", HASH).unwrap();
        let out = f.render();
        for kept in [
            "# Users of the registry.",
            "# Alice runs it.",
            "\" # rotated yearly\n",
            "# The end.",
        ] {
            assert!(out.contains(kept), "{out}");
        }
        assert!(out.find("[users.alice]") < out.find("[users.bob]"), "{out}");
    }
}
