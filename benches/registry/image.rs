//! Section `image`: real clients, `skopeo copy` and the Docker engine
//! (`docker push`, `docker pull`), pushing and pulling an image of about
//! 200 MB in several uncompressed tar layers, to and from each registry, in
//! seconds. Every round uses a freshly generated image, so neither the
//! registry nor a client's cache has seen any of its blobs before: each push
//! uploads every byte and never mounts or skips a layer.
//!
//! The engine is the test suite's (tests/common/docker.rs): a dockerd of its
//! own with a temporary data root, reaching both registries over plain HTTP
//! (127.0.0.0/8 is an insecure registry by default). It `docker load`s the
//! round's image from a `docker save` archive skopeo writes of the same OCI
//! layout, and pushes it gzipped, as docker always does.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::Options;
use crate::blobs;
use crate::docker::{DockerCli, DockerEngine};
use crate::oci::{layout_tag_digest, oci_ref, write_layout};
use crate::report::{Better, Row};
use crate::servers::{self, PASSWORD, Servers, Target, USER};

const REPOSITORY: &str = "bench/image";
/// docker's pushes go to a repository of their own: its layers are gzipped,
/// so they are blobs neither registry holds, but a repository of their own
/// keeps the two clients' tags apart.
const DOCKER_REPOSITORY: &str = "bench/docker-image";
const TAG: &str = "v1";
/// Layer payloads in MB: 200 MB in all, of unequal sizes as real images have.
const LAYERS_MB: [usize; 5] = [80, 50, 40, 20, 10];
/// Rounds per registry; the median is kept.
const ROUNDS: usize = 3;

pub async fn run(servers: &Servers, _options: &Options) -> Vec<Row> {
    let root = servers.path("image");
    let hosts: Vec<&str> = servers
        .targets()
        .into_iter()
        .map(|t| t.host.as_str())
        .collect();
    let env = ClientEnv::new(&root.join("client"), &hosts);
    let engine = DockerEngine::start();
    let docker = engine.client();
    for target in servers.targets() {
        if let Err(out) = docker.login(&target.host, USER, PASSWORD) {
            panic!(
                "docker login {} refused the bench user:\n{}",
                target.host,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let mut push: [Vec<f64>; 2] = Default::default();
    let mut pull: [Vec<f64>; 2] = Default::default();
    let mut docker_push: [Vec<f64>; 2] = Default::default();
    let mut docker_pull: [Vec<f64>; 2] = Default::default();
    let started = Instant::now();
    for round in 0..ROUNDS {
        let source = root.join(format!("source-{round}"));
        let sizes = LAYERS_MB.map(|mb| mb * 1_000_000);
        let layout = write_layout(&source, TAG, &sizes);
        let manifest_digest = layout.manifest_digest;
        // Both registries in each round, so drift in the machine's load
        // spreads over both rather than favouring whichever ran first.
        for (i, target) in servers.targets().into_iter().enumerate() {
            let remote = format!("docker://{}/{REPOSITORY}:{TAG}", target.host);
            let digest_file = root.join("pushed-digest");
            let start = Instant::now();
            env.skopeo(&[
                "copy",
                "--preserve-digests",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{USER}:{PASSWORD}"),
                "--digestfile",
                path_str(&digest_file),
                &oci_ref(&source, TAG),
                &remote,
            ])
            .await;
            push[i].push(start.elapsed().as_secs_f64());
            let pushed = fs::read_to_string(&digest_file).expect("skopeo --digestfile");
            assert_eq!(
                pushed.trim(),
                manifest_digest,
                "{}: skopeo pushed a manifest other than the layout's",
                target.name
            );

            let back = root.join(format!("pulled-{round}-{}", target.name));
            let start = Instant::now();
            env.skopeo(&[
                "copy",
                "--preserve-digests",
                "--src-tls-verify=false",
                "--src-creds",
                &format!("{USER}:{PASSWORD}"),
                &remote,
                &oci_ref(&back, TAG),
            ])
            .await;
            pull[i].push(start.elapsed().as_secs_f64());
            let pulled = layout_tag_digest(&back, TAG);
            assert_eq!(
                pulled, manifest_digest,
                "{}: the pulled manifest differs from the pushed one",
                target.name
            );
            // skopeo checked every blob's digest on the way in; the copy is
            // no longer needed and 200 MB a round adds up.
            fs::remove_dir_all(&back).expect("remove pulled layout");
        }
        let archive = root.join(format!("docker-{round}.tar"));
        env.skopeo(&[
            "copy",
            &oci_ref(&source, TAG),
            &format!(
                "docker-archive:{}:{DOCKER_REPOSITORY}:{TAG}",
                path_str(&archive)
            ),
        ])
        .await;
        fs::remove_dir_all(&source).expect("remove source layout");
        let [push_times, pull_times] =
            docker_round(&docker, &archive, &layout.config_digest, servers.targets());
        fs::remove_file(&archive).expect("remove docker archive");
        for i in 0..2 {
            docker_push[i].push(push_times[i]);
            docker_pull[i].push(pull_times[i]);
        }
    }
    drop(docker);
    drop(engine);
    eprintln!(
        "image: {ROUNDS} rounds of push and pull to both registries in {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let [portcullis_push, distribution_push] = push.map(median);
    let [portcullis_pull, distribution_pull] = pull.map(median);
    let [portcullis_docker_push, distribution_docker_push] = docker_push.map(median);
    let [portcullis_docker_pull, distribution_docker_pull] = docker_pull.map(median);
    vec![
        Row::new(
            "image push, skopeo, 200 MB in 5 layers",
            "s",
            portcullis_push,
            Better::Lower,
        )
        .against("distribution", distribution_push)
        .note(
            "skopeo uploads the layers one request each, a few in parallel, from a layout on \
             disk; the registry hashes and writes every byte once, so the figure is bounded by \
             disk writes and SHA-256 on both sides of the connection, plus skopeo's start-up \
             and token round trips",
        ),
        Row::new(
            "image pull, skopeo, 200 MB in 5 layers",
            "s",
            portcullis_pull,
            Better::Lower,
        )
        .against("distribution", distribution_pull)
        .note(
            "the blobs were just pushed: distribution wrote them through the page cache and \
             serves them from it, Portcullis wrote them with O_DIRECT and reads them back from \
             the disk (a window ahead); skopeo verifies each blob's digest and writes it into \
             a fresh layout, so the client's SHA-256 and disk writes bound the figure as much \
             as the server",
        ),
        Row::new(
            "image push, docker, 200 MB in 5 layers",
            "s",
            portcullis_docker_push,
            Better::Lower,
        )
        .against("distribution", distribution_docker_push)
        .note(DOCKER_PUSH_NOTE),
        Row::new(
            "image pull, docker, 200 MB in 5 layers",
            "s",
            portcullis_docker_pull,
            Better::Lower,
        )
        .against("distribution", distribution_docker_pull)
        .note(DOCKER_PULL_NOTE),
    ]
}

const DOCKER_PUSH_NOTE: &str = "dockerd reads each layer back out of its vfs storage and \
     gzips it (the random bytes do not compress) while it uploads it; the registry uses a \
     small fraction of a core meanwhile, so the client's compression bounds the figure for \
     both";
const DOCKER_PULL_NOTE: &str = "dockerd downloads the gzipped layers, decompresses and \
     verifies them and unpacks them into its vfs storage, which copies every lower layer \
     into each new one; the registry is all but idle meanwhile: the client's work bounds the \
     figure for both";

/// One round of the Docker engine against both registries: loads the image
/// from `archive`, tags it for each, pushes it to each, removes it, then
/// pulls it back from each (removing it after each pull, so that every pull
/// fetches every layer). Returns the push and the pull times per target,
/// in seconds. `config_digest` is the image's id, checked after each pull.
fn docker_round(
    docker: &DockerCli,
    archive: &Path,
    config_digest: &str,
    targets: [&Target; 2],
) -> [[f64; 2]; 2] {
    docker.load(archive);
    let local = format!("{DOCKER_REPOSITORY}:{TAG}");
    let remote = targets.map(|t| format!("{}/{DOCKER_REPOSITORY}:{TAG}", t.host));
    let mut times = [[0.0; 2]; 2];
    for (i, reference) in remote.iter().enumerate() {
        docker.run(&["tag", &local, reference]);
        times[0][i] = timed(targets[i], "docker push", || {
            docker.run(&["push", reference]);
        });
    }
    // Every tag of the image, so that nothing of it stays on the engine.
    docker.run(&["rmi", &local, &remote[0], &remote[1]]);
    for (i, reference) in remote.iter().enumerate() {
        times[1][i] = timed(targets[i], "docker pull", || {
            docker.run(&["pull", reference]);
        });
        let id = docker.inspect(reference)["Id"].as_str().map(str::to_owned);
        assert_eq!(
            id.as_deref(),
            Some(config_digest),
            "{}: docker pulled an image other than the one pushed",
            targets[i].name
        );
        docker.run(&["rmi", reference]);
    }
    times
}

/// Runs `client` and returns its time in seconds, printing how busy the
/// registry was meanwhile (the evidence for which side bounds the figure).
fn timed(target: &Target, what: &str, client: impl FnOnce()) -> f64 {
    let cpu = blobs::cpu_seconds(target.pid);
    let start = Instant::now();
    client();
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!(
        "  {} {what}: {elapsed:.2} s, server {:.2} cores",
        target.name,
        (blobs::cpu_seconds(target.pid) - cpu) / elapsed
    );
    elapsed
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("the run's tempdir has a UTF-8 path")
}

/// A private configuration world for skopeo: its own HOME, registries.conf
/// (both registries plain HTTP), signature policy and empty auth file, so
/// nothing of the user's or the system's configuration is read.
/// Credentials are given on the command line.
struct ClientEnv {
    root: PathBuf,
}

impl ClientEnv {
    fn new(root: &Path, hosts: &[&str]) -> Self {
        for sub in ["home/.config/containers", "xdg-run", "tmp"] {
            fs::create_dir_all(root.join(sub)).expect("client dirs");
        }
        let mut registries =
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n".to_owned();
        for host in hosts {
            registries.push_str(&format!(
                "[[registry]]\nlocation = \"{host}\"\ninsecure = true\n"
            ));
        }
        fs::write(root.join("registries.conf"), registries).expect("registries.conf");
        // Unsigned images from anywhere: signatures are not what is measured.
        fs::write(
            root.join("policy.json"),
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("policy.json");
        fs::write(root.join("auth.json"), r#"{"auths":{}}"#).expect("auth.json");
        ClientEnv {
            root: root.to_owned(),
        }
    }

    /// Runs skopeo with nothing inherited but PATH; panics with its output
    /// when it fails, so a broken copy never yields a figure.
    async fn skopeo(&self, args: &[&str]) {
        let at = |sub: &str| self.root.join(sub);
        let mut cmd = tokio::process::Command::new("skopeo");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", at("home"))
            .env("XDG_CONFIG_HOME", at("home/.config"))
            .env("XDG_DATA_HOME", at("home/.local/share"))
            .env("XDG_RUNTIME_DIR", at("xdg-run"))
            .env("TMPDIR", at("tmp"))
            .env("CONTAINERS_REGISTRIES_CONF", at("registries.conf"))
            .env("REGISTRY_AUTH_FILE", at("auth.json"))
            .arg("--policy")
            .arg(at("policy.json"))
            .args(args);
        servers::client_output(cmd, &format!("skopeo {}", args.join(" "))).await;
    }
}
