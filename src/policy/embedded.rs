//! The default policy built into the binary, and the choice between it and
//! a policy directory.
//!
//! A server started outside a checkout finds no `./policies`; denying every
//! request there only left clients saying "denied". So a policy directory
//! that does not exist means the shipped default, compiled in from the very
//! files of `policies/` (they cannot drift apart). A directory that exists
//! but holds no rules is an explicit choice and stays "deny everything".

use std::path::{Path, PathBuf};

use super::{Policy, PolicyError};

/// The files of `policies/`, in file-name order. A test checks that the
/// list names every file of that directory.
const FILES: &[(&str, &str)] = &[
    (
        "10-admins.toml",
        include_str!("../../policies/10-admins.toml"),
    ),
    (
        "50-users.toml",
        include_str!("../../policies/50-users.toml"),
    ),
];

/// Where the rules in force come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The `*.toml` files of a directory.
    Dir(PathBuf),
    /// The embedded default, because this directory does not exist.
    Embedded { missing_dir: PathBuf },
}

impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => write!(f, "the policy directory {}", dir.display()),
            Self::Embedded { missing_dir } => write!(
                f,
                "the embedded default policy ({} does not exist)",
                missing_dir.display()
            ),
        }
    }
}

impl Policy {
    /// The default policy built into the binary. Its rules' origins read
    /// `<embedded>/50-users.toml:LINE`.
    pub fn embedded() -> Self {
        let files: Vec<(PathBuf, &str)> = FILES
            .iter()
            .map(|(name, text)| (Path::new("<embedded>").join(name), *text))
            .collect();
        Self::from_files(files.iter().map(|(f, t)| (f.as_path(), *t)))
            .expect("the embedded policy is checked by the unit tests")
    }

    /// The policy the server runs with for the configured directory: its
    /// files, or the embedded default when the directory does not exist.
    pub fn load_configured(dir: &Path) -> Result<(Self, PolicySource), PolicyError> {
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((
                Self::embedded(),
                PolicySource::Embedded {
                    missing_dir: dir.to_owned(),
                },
            )),
            _ => Ok((Self::load_dir(dir)?, PolicySource::Dir(dir.to_owned()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_files_are_those_of_policies() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        assert_eq!(embedded, on_disk, "embed every file of policies/ in FILES");
        assert_eq!(
            Policy::embedded().len(),
            Policy::load_dir(&dir).unwrap().len()
        );
    }

    #[test]
    fn a_missing_directory_is_the_embedded_default_an_empty_one_denies() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("policies");
        let (policy, source) = Policy::load_configured(&missing).unwrap();
        assert_eq!(
            source,
            PolicySource::Embedded {
                missing_dir: missing.clone()
            }
        );
        assert_eq!(policy.len(), Policy::embedded().len());
        std::fs::create_dir(&missing).unwrap();
        let (policy, source) = Policy::load_configured(&missing).unwrap();
        assert_eq!(source, PolicySource::Dir(missing));
        assert!(policy.is_empty());
    }
}
