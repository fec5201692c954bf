//! `[storage.s3]`: the registry's storage in an S3-compatible bucket
//! instead of a local directory.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct S3Config {
    pub bucket: String,
    /// The store's region (Garage: the `s3_region` of its configuration).
    #[serde(default = "default_region")]
    pub region: String,
    /// `http(s)://host[:port]` of a self-hosted store; unset for AWS.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Keys are stored under `<prefix>/`, so one bucket can hold more than
    /// the registry. Empty: the bucket's root.
    #[serde(default)]
    pub prefix: String,
    /// The access key; with `secret_access_key_file`. Unset: the usual AWS
    /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`) or the instance's role.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// A file holding the secret key (its first line); never the secret
    /// itself in the configuration.
    #[serde(default)]
    pub secret_access_key_file: Option<PathBuf>,
    /// `host/bucket/key` addressing, which self-hosted stores want; unset:
    /// on with an `endpoint`, off for AWS (`bucket.host/key`).
    #[serde(default)]
    pub path_style: Option<bool>,
    /// Size of the parts an upload is sent in, in MiB (S3's minimum: 5).
    #[serde(default = "default_part_size")]
    pub part_size_mib: usize,
    /// Parts one upload sends at once.
    #[serde(default = "default_parts_in_flight")]
    pub parts_in_flight: usize,
    /// How long a connection to the store may stay silent (no byte of a
    /// response, no progress sending a request) before the request fails,
    /// in seconds. A blob streams for as long as it takes.
    #[serde(default = "default_io_timeout")]
    pub io_timeout_secs: u64,
    /// Whether the store honours conditional writes (`If-None-Match`,
    /// `If-Match`): AWS S3, MinIO and Ceph do, Garage does not. Unset: the
    /// store is asked at start. Where they are not honoured, two replicas
    /// writing one object at once leave the last one's.
    #[serde(default)]
    pub conditional_writes: Option<bool>,
    /// Blob pulls answered with `307 Temporary Redirect` to a URL of the
    /// store's own, presigned for `redirect_expiry_secs`, so the bytes go
    /// from the store to the client without passing through Portcullis
    /// (after it authorized the pull). The `endpoint` must then be
    /// reachable by clients. Off: pulls stream through Portcullis.
    #[serde(default)]
    pub redirect_pulls: bool,
    #[serde(default = "default_redirect_expiry")]
    pub redirect_expiry_secs: u64,
    /// With a plain-HTTP `endpoint`, blob pulls to plain-HTTP/1 clients go
    /// from the store's sockets to the client's with `splice(2)`, never
    /// through Portcullis' memory (half the CPU per byte). A range asked
    /// for ahead then waits in its socket's kernel buffer rather than in
    /// memory, which is shallower: off for a store that serves each
    /// connection slowly. Off: pulls are copied through Portcullis.
    #[serde(default = "default_relay_pulls")]
    pub relay_pulls: bool,
    /// A pull of more than a part is read in ranged GETs of
    /// `part_size_mib`, this many fetched ahead of the one being sent, so
    /// that the store serves it on several connections at once. 0: one GET
    /// per pull.
    #[serde(default = "default_reads_ahead")]
    pub reads_ahead: usize,
    /// The most all pulls together hold fetched ahead, in MiB; a pull that
    /// finds none left reads its next range on its own.
    #[serde(default = "default_read_memory")]
    pub read_memory_mib: usize,
}

fn default_reads_ahead() -> usize {
    // On a single-node Garage sharing two cores (2026-12-03), one 1 GiB
    // pull went 390 MB/s in one GET, 420 with 2 ranges ahead, 520 with 4
    // and 560 with 6.
    4
}

fn default_read_memory() -> usize {
    // Four pulls' read-ahead at the defaults (4 × 8 MiB); more pulls at
    // once read their ranges one at a time.
    128
}

fn default_redirect_expiry() -> u64 {
    // Long enough for a client to follow the redirect and start reading
    // (the download itself may take longer), short enough that a leaked
    // address is soon worthless.
    60
}

fn default_relay_pulls() -> bool {
    true
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

fn default_part_size() -> usize {
    8
}

fn default_parts_in_flight() -> usize {
    2
}

fn default_io_timeout() -> u64 {
    60
}

impl S3Config {
    /// The parts an upload is cut into.
    pub fn parts(&self) -> crate::storage::s3::PartLimits {
        crate::storage::s3::PartLimits {
            size: self.part_size_mib << 20,
            in_flight: self.parts_in_flight,
        }
    }

    /// What is wrong with it, key by key (`(key, message)`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut found = Vec::new();
        if self.bucket.is_empty() {
            found.push(("bucket", "storage.s3.bucket must not be empty".to_owned()));
        }
        if let Some(endpoint) = &self.endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            found.push((
                "endpoint",
                format!("storage.s3.endpoint `{endpoint}` must start with http:// or https://"),
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key_file.is_some() {
            found.push((
                "access_key_id",
                "storage.s3: access_key_id needs secret_access_key_file, and secret_access_key_file access_key_id"
                    .to_owned(),
            ));
        }
        // S3 refuses parts under 5 MiB (the last excepted) and over 5 GiB.
        if !(5..=5120).contains(&self.part_size_mib) {
            found.push((
                "part_size_mib",
                "storage.s3.part_size_mib must be between 5 and 5120".to_owned(),
            ));
        }
        if !(1..=64).contains(&self.parts_in_flight) {
            found.push((
                "parts_in_flight",
                "storage.s3.parts_in_flight must be between 1 and 64".to_owned(),
            ));
        }
        if !(1..=3600).contains(&self.redirect_expiry_secs) {
            found.push((
                "redirect_expiry_secs",
                "storage.s3.redirect_expiry_secs must be between 1 and 3600".to_owned(),
            ));
        }
        if self.reads_ahead > 64 {
            found.push((
                "reads_ahead",
                "storage.s3.reads_ahead must be between 0 and 64".to_owned(),
            ));
        }
        if self.io_timeout_secs == 0 {
            found.push((
                "io_timeout_secs",
                "storage.s3.io_timeout_secs must be positive".to_owned(),
            ));
        }
        found
    }
}
