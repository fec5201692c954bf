//! Configuration: TOML, every key known (unknown keys are an error), defaults
//! that make `portcullis serve` work with no file at all.
//!
//! Loading reports *every* problem it can find, each with `file:line:col`:
//! syntax errors (the parser recovers), unknown keys anywhere, a type error
//! per section (sections are read independently so one mistake does not hide
//! the others), and semantic checks on the values.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct StorageConfig {
    /// Root directory of the filesystem storage.
    pub root: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter directive, e.g. `info` or `portcullis=debug`.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("./data"),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
        }
    }
}

/// One thing wrong with a configuration file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line and column; `None` when the problem has no single place.
    pub location: Option<(usize, usize)>,
    pub message: String,
}

/// Everything wrong with one configuration file.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let plural = if count == 1 { "" } else { "s" };
        write!(f, "{}: {count} problem{plural}", self.path.display())?;
        for problem in &self.problems {
            match problem.location {
                Some((line, col)) => write!(
                    f,
                    "\n{}:{line}:{col}: {}",
                    self.path.display(),
                    problem.message
                )?,
                None => write!(f, "\n{}: {}", self.path.display(), problem.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError {
            path: path.to_owned(),
            problems: vec![Problem {
                location: None,
                message,
            }],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Self::parse(&text).map_err(|problems| ConfigError {
            path: path.to_owned(),
            problems,
        })
    }

    /// Parses and validates configuration text, returning every problem found.
    pub fn parse(text: &str) -> Result<Self, Vec<Problem>> {
        let mut reader = Reader {
            text,
            problems: Vec::new(),
        };
        let (root, syntax) = DeTable::parse_recoverable(text);
        for e in syntax {
            reader.error(e);
        }
        if !reader.problems.is_empty() {
            return Err(reader.problems);
        }
        let root = root.into_inner();
        let mut config = Config::default();
        for (key, value) in root.iter() {
            let span = key.span();
            match key.get_ref().as_ref() {
                "server" => config.server = reader.section("server", value),
                "storage" => config.storage = reader.section("storage", value),
                "log" => config.log = reader.section("log", value),
                other => reader.at(span, format!("unknown section or key `{other}`")),
            }
        }
        config.check(&root, &mut reader);
        if reader.problems.is_empty() {
            Ok(config)
        } else {
            reader.problems.sort_by_key(|p| p.location);
            Err(reader.problems)
        }
    }

    /// Checks on values that parsed but make no sense.
    fn check(&self, root: &DeTable<'_>, reader: &mut Reader<'_>) {
        if self.storage.root.as_os_str().is_empty() {
            let span = lookup(root, &["storage", "root"]);
            reader.at_opt(span, "storage.root must not be empty".to_owned());
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            let span = lookup(root, &["log", "level"]);
            reader.at_opt(span, format!("log.level is not a valid filter: {e}"));
        }
    }
}

struct Reader<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

impl Reader<'_> {
    /// Reads one section on its own, recording its unknown keys and type
    /// error; on error the section keeps its defaults so checking goes on.
    fn section<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> T {
        let mut unknown = Vec::new();
        let deserializer = ValueDeserializer::from(value.clone());
        let parsed =
            serde_ignored::deserialize(deserializer, |path| unknown.push(path.to_string()));
        for path in unknown {
            let keys: Vec<&str> = path.split('.').collect();
            let span = match value.get_ref() {
                DeValue::Table(table) => lookup_key(table, &keys),
                _ => None,
            };
            self.at_opt(span, format!("unknown key `{name}.{path}`"));
        }
        match parsed {
            Ok(section) => section,
            Err(e) => {
                let message = format!("in [{name}]: {}", e.message().trim_end());
                self.at_opt(e.span(), message);
                T::default()
            }
        }
    }

    fn error(&mut self, e: toml::de::Error) {
        let message = e.message().trim_end().to_owned();
        self.at_opt(e.span(), message);
    }

    fn at(&mut self, span: Range<usize>, message: String) {
        self.at_opt(Some(span), message)
    }

    fn at_opt(&mut self, span: Option<Range<usize>>, message: String) {
        let location = span.map(|span| line_col(self.text, span.start));
        self.problems.push(Problem { location, message });
    }
}

/// The span of the key at `path` (for pointing at it), if present.
fn lookup(root: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    lookup_key(root, path)
}

fn lookup_key(table: &DeTable<'_>, path: &[&str]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.iter().find(|(k, _)| k.get_ref() == first)?;
    if rest.is_empty() {
        return Some(key.span());
    }
    match value.get_ref() {
        DeValue::Table(inner) => lookup_key(inner, rest),
        _ => None,
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        Config::parse(text)
            .unwrap_err()
            .into_iter()
            .map(|p| match p.location {
                Some((l, c)) => format!("{l}:{c}: {}", p.message),
                None => p.message,
            })
            .collect()
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        let config = Config::default();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(config.storage.root, PathBuf::from("./data"));
    }

    #[test]
    fn values_are_read() {
        let config = Config::parse(
            "[server]\nlisten = \"0.0.0.0:5001\"\n[storage]\nroot = \"/srv/r\"\n[log]\nlevel = \"debug\"\n",
        )
        .unwrap();
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:5001");
        assert_eq!(config.storage.root, PathBuf::from("/srv/r"));
        assert_eq!(config.log.level, "debug");
    }

    #[test]
    fn every_problem_is_listed_with_its_place() {
        let text = "\
[server]
lisen = \"0.0.0.0:1\"
[storage]
root = 5
[log]
level = \"info\"
colour = true
[tls]
";
        let found = problems(text);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].starts_with("2:1: unknown key `server.lisen`"),
            "{found:#?}"
        );
        assert!(found[1].starts_with("4:8: in [storage]"), "{found:#?}");
        assert!(
            found[2].starts_with("7:1: unknown key `log.colour`"),
            "{found:#?}"
        );
        assert!(
            found[3].starts_with("8:2: unknown section or key `tls`"),
            "{found:#?}"
        );
    }

    #[test]
    fn bad_values_are_reported() {
        let found = problems("[server]\nlisten = \"nowhere\"\n[log]\nlevel = \"[[[\"\n");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].starts_with("2:10: in [server]"), "{found:#?}");
        assert!(found[1].starts_with("4:1: log.level"), "{found:#?}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let found = problems("[server\nlisten = 1\n");
        assert!(!found.is_empty());
        assert!(found[0].starts_with("1:"), "{found:#?}");
    }
}
