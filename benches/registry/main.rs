//! The benchmark harness: Portcullis (tokens on) and distribution 2.8 in the
//! same run on the same machine, beside the machine's own limits (SHA-256,
//! a plain file write, nginx serving the same file), reported as ratios
//! because absolute figures on a shared machine drift.
//!
//! Run it with `scripts/bench.sh` (which installs what it needs), or
//! `cargo bench --bench registry -- [--only SECTION,...] [--blob-mib N]
//! [--portcullis PATH]`; `--portcullis` measures another build of the
//! server (say, the previous commit's) with this harness.
//! Sections: blobs, image, small, tokens, sso, ops, gc, scale, tls, ldap, v1, upstream, s3.

mod bare;
mod blobs;
// The test suite's Docker engine harness, and the client helpers it runs the
// docker CLI with.
#[path = "../../tests/common/clients.rs"]
mod clients;
#[path = "../../tests/common/docker.rs"]
mod docker;
// distribution's configuration, as the interoperability tests write it.
#[path = "../../tests/common/distribution.rs"]
mod distribution;
// The test suite's single-node Garage, the S3 store of the `s3` section.
#[path = "../../tests/common/garage.rs"]
mod garage;
mod image;
mod ldap;
// The test suite's legacy v1 registry.
#[path = "../../tests/common/legacy_v1.rs"]
mod legacy_v1;
// The test suite's TLS certificates and its OpenLDAP harness.
// Only the CA the slapd harness issues its certificate from is used.
#[allow(dead_code)]
#[path = "../../tests/common/pki.rs"]
mod pki;
#[path = "../../tests/common/slapd.rs"]
mod slapd;
// The OCI layout builder the client tests use.
mod gc;
#[path = "../../tests/common/oci.rs"]
mod oci;
mod ops;
mod report;
mod s3;
mod scale;
mod servers;
mod small;
mod sso;
mod tls;
mod upstream;
mod v1;

use std::time::Instant;

use report::Row;
use servers::Servers;

/// Options from the command line.
pub struct Options {
    /// Size of the big blob, in MiB (1024 unless testing the harness).
    pub blob_mib: u64,
    only: Option<Vec<String>>,
    /// The server binary, when not the one this benchmark was built with.
    portcullis: Option<std::path::PathBuf>,
}

impl Options {
    fn parse() -> Self {
        let mut options = Options {
            blob_mib: 1024,
            only: None,
            portcullis: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--only" => {
                    options.only = args
                        .next()
                        .map(|s| s.split(',').map(str::to_owned).collect());
                }
                "--blob-mib" => {
                    options.blob_mib = args.next().and_then(|s| s.parse().ok()).unwrap_or(1024);
                }
                "--portcullis" => options.portcullis = args.next().map(Into::into),
                // `cargo bench` passes `--bench`; anything else is a mistake.
                "--bench" => {}
                other => {
                    eprintln!("unknown argument {other}");
                    std::process::exit(2);
                }
            }
        }
        options
    }

    fn runs(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == section))
    }
}

fn main() {
    let options = Options::parse();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = Instant::now();
    let servers = Servers::start(options.portcullis.as_deref());
    eprintln!(
        "portcullis at {}, distribution at {}",
        servers.portcullis.url, servers.distribution.url
    );
    let mut rows: Vec<Row> = Vec::new();
    let sections: [(&str, &dyn Fn() -> Vec<Row>); 13] = [
        ("blobs", &|| {
            runtime.block_on(blobs::run(&servers, &options))
        }),
        ("image", &|| {
            runtime.block_on(image::run(&servers, &options))
        }),
        ("small", &|| {
            runtime.block_on(small::run(&servers, &options))
        }),
        ("tokens", &|| {
            runtime.block_on(small::tokens(&servers, &options))
        }),
        ("sso", &|| runtime.block_on(sso::run(&servers, &options))),
        ("ops", &|| runtime.block_on(ops::run(&servers, &options))),
        ("gc", &|| runtime.block_on(gc::run(&servers, &options))),
        ("scale", &|| {
            runtime.block_on(scale::run(&servers, &options))
        }),
        ("tls", &|| runtime.block_on(tls::run(&servers, &options))),
        ("ldap", &|| runtime.block_on(ldap::run(&servers, &options))),
        ("v1", &|| runtime.block_on(v1::run(&servers, &options))),
        ("upstream", &|| {
            runtime.block_on(upstream::run(&servers, &options))
        }),
        ("s3", &|| runtime.block_on(s3::run(&servers, &options))),
    ];
    for (name, run) in sections {
        if !options.runs(name) {
            continue;
        }
        let start = Instant::now();
        eprintln!("== {name}");
        let section = run();
        eprint!("{}", report::table(&section));
        eprintln!("({name}: {:.0} s)", start.elapsed().as_secs_f64());
        rows.extend(section);
    }
    println!("{}", report::table(&rows));
    print!("{}", report::notes(&rows));
    println!(
        "machine: {} cores, {}; run took {:.0} s",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        started.elapsed().as_secs_f64()
    );
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}
