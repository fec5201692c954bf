//! Configuration: TOML, every key known (unknown keys are an error), defaults
//! that make `portcullis serve` work with no file at all.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

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

impl Config {
    /// Reads and validates a configuration file. (Full diagnostics pending.)
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}
