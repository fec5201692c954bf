//! `portcullis migrate --from-v1` against the real legacy registry
//! (docker-registry 0.9.1, `common::legacy_v1`): what old engines pushed
//! over v1 comes out of the built-in storage as schema 2 images that skopeo
//! and podman pull, with the same files and the same settings; a second run
//! copies nothing; a run that could not read everything copies the rest,
//! leaves no half-made tag, and the next run copies only what was missing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common;

use common::clients::{self, ClientEnv};
use common::legacy_v1::LegacyV1;
use common::process::ServerProcess;
use common::sha256;
use common::v1_client::{Auth, Engine, Image, tar};
use serde_json::{Value, json};

/// The legacy registry's content: `library/busybox` (`latest` and `1.0`,
/// three images; `busybox` on v2, the name engines ask v2 for) and
/// `team/app:v1`, one image on top of busybox's.
struct Fleet {
    base: Image,
    /// An image with an empty layer, as `ENV` in a Dockerfile made them.
    env: Image,
    /// A layer the engine had gzipped, stored as it was.
    top: Image,
    /// Its layer, uncompressed.
    top_tar: Vec<u8>,
    app: Image,
}

fn v1_id() -> String {
    sha256(uuid::Uuid::new_v4().as_bytes())["sha256:".len()..].to_owned()
}

fn image(parent: Option<&Image>, layer: Vec<u8>, mut json: Value) -> Image {
    let id = v1_id();
    json["id"] = id.clone().into();
    json["created"] = "2015-06-01T10:00:00Z".into();
    json["docker_version"] = "1.6.2".into();
    if let Some(parent) = parent {
        json["parent"] = parent.id.clone().into();
    }
    Image {
        id,
        json: serde_json::to_vec(&json).unwrap(),
        layer,
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn fleet() -> Fleet {
    let settings = |cmd: &str| {
        json!({
            "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
            "Cmd": [cmd],
            "WorkingDir": "/srv",
            "User": "nobody",
            "ExposedPorts": {"8080/tcp": {}},
        })
    };
    let base = image(
        None,
        tar("etc/os-release", b"NAME=legacy\n"),
        json!({"container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD file:os in /"]}}),
    );
    let env = image(
        Some(&base),
        vec![0; 1024],
        json!({"container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ENV GREETING=hello"]}}),
    );
    let top_tar = tar("srv/index.html", b"<p>served since 2015</p>\n");
    let top = image(
        Some(&env),
        gzip(&top_tar),
        json!({
            "config": settings("/bin/httpd"),
            "container_config": {"Cmd": ["/bin/sh", "-c", "cp index.html /srv"]},
            "author": "ops@example.com",
        }),
    );
    let app = image(
        Some(&top),
        tar("srv/app", b"#!/bin/sh\necho app\n"),
        json!({
            "config": settings("/srv/app"),
            "container_config": {"Cmd": ["/bin/sh", "-c", "cp app /srv"]},
            "architecture": "amd64",
            "os": "linux",
        }),
    );
    Fleet {
        base,
        env,
        top,
        top_tar,
        app,
    }
}

fn copy(image: &Image) -> Image {
    Image {
        id: image.id.clone(),
        json: image.json.clone(),
        layer: image.layer.clone(),
    }
}

/// Pushes the fleet to `backend` as engines 1.5–1.9 did.
async fn push(backend: &LegacyV1, fleet: &Fleet) {
    // The backend is standalone: it checks no credentials.
    let mut engine = Engine::new(&backend.url(), "Basic dXNlcjpwdw==", Auth::BasicEverywhere);
    let busybox = [&fleet.base, &fleet.env, &fleet.top].map(copy).into();
    engine.push("library/busybox", "latest", busybox).await;
    // A second tag on the same image, and an image on top of it in another
    // repository (its parents are in the backend already).
    let tagged = reqwest::Client::new()
        .put(format!(
            "{}/v1/repositories/library/busybox/tags/1.0",
            backend.url()
        ))
        .json(&fleet.top.id)
        .send()
        .await
        .unwrap();
    assert_eq!(tagged.status(), 200);
    engine.push("team/app", "v1", vec![copy(&fleet.app)]).await;
}

/// `portcullis migrate --from-v1 <backend> --data-dir <data> <extra…>`.
/// Runs on a blocking thread: the test's runtime has one.
async fn migrate(backend: &LegacyV1, data: &Path, extra: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["migrate", "--from-v1", &backend.url(), "--data-dir"])
        .arg(data)
        .args(extra);
    tokio::task::spawn_blocking(move || clients::output(command, None))
        .await
        .unwrap()
}

/// [`migrate`], which must succeed; its report.
async fn migrated(backend: &LegacyV1, data: &Path, extra: &[&str]) -> String {
    let out = migrate(backend, data, extra).await;
    assert!(
        out.status.success(),
        "{}",
        clients::describe("migrate", &out)
    );
    stdout(&out)
}

/// The schema 2 manifest `server` serves for `repo:tag`.
async fn manifest_of(server: &ServerProcess, repo: &str, tag: &str) -> Value {
    let res = reqwest::Client::new()
        .get(server.at(&format!("/v2/{repo}/manifests/{tag}")))
        .header("accept", image_manifest())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{repo}:{tag}");
    res.json().await.unwrap()
}

fn image_manifest() -> &'static str {
    "application/vnd.docker.distribution.manifest.v2+json"
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The backend's file holding `id`'s layer.
fn layer_file(backend: &LegacyV1, id: &str) -> PathBuf {
    let path = backend.data_dir().join("images").join(id).join("layer");
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// `repo:tag` copied by skopeo into a directory: its manifest, config and
/// blobs by digest.
struct Pulled {
    manifest: Value,
    config: Value,
    dir: PathBuf,
}

impl Pulled {
    fn blob(&self, digest: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(digest.trim_start_matches("sha256:"))).unwrap()
    }

    fn layer_digests(&self) -> Vec<String> {
        self.manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn skopeo_pull(env: &ClientEnv, name: &str) -> Pulled {
    let dir = env.path(&name.replace(['/', ':'], "_"));
    env.skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &env.docker_ref(name),
        &format!("dir:{}", dir.display()),
    ]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = std::fs::read(dir.join(config_digest.trim_start_matches("sha256:"))).unwrap();
    Pulled {
        config: serde_json::from_slice(&config).unwrap(),
        manifest,
        dir,
    }
}

#[tokio::test]
async fn a_legacy_registry_moves_to_v2_with_the_same_files_and_settings() {
    clients::require("skopeo");
    clients::require("podman");
    let backend = LegacyV1::start();
    let fleet = fleet();
    push(&backend, &fleet).await;
    let data = tempfile::tempdir().unwrap();

    let report = migrated(&backend, data.path(), &["--jobs", "2"]).await;
    assert!(
        report.contains("copied 4 layers") && report.contains("migrated 3 tags;"),
        "{report}"
    );

    let server = ServerProcess::start(data.path(), &[]);
    let env = ClientEnv::new(&server.host);
    let (busybox, env_) = tokio::task::spawn_blocking(move || {
        let pulled = skopeo_pull(&env, "busybox:latest");
        (pulled, env)
    })
    .await
    .unwrap();
    let env = env_;

    // Schema 2, the empty layer left out, the plain tar gzipped with its
    // bytes unchanged, the engine's gzip stored as it was.
    assert_eq!(busybox.manifest["schemaVersion"], 2);
    assert_eq!(busybox.manifest["mediaType"], image_manifest());
    let layers = busybox.layer_digests();
    assert_eq!(layers.len(), 2, "{}", busybox.manifest);
    assert_eq!(gunzip(&busybox.blob(&layers[0])), fleet.base.layer);
    assert_eq!(busybox.blob(&layers[1]), fleet.top.layer);
    assert_eq!(layers[1], sha256(&fleet.top.layer));
    let config = &busybox.config;
    assert_eq!(
        config["rootfs"]["diff_ids"],
        json!([sha256(&fleet.base.layer), sha256(&fleet.top_tar)])
    );
    assert_eq!(
        config["config"]["Env"],
        json!(["PATH=/usr/bin:/bin", "GREETING=hello"])
    );
    assert_eq!(config["config"]["Cmd"], json!(["/bin/httpd"]));
    assert_eq!(config["config"]["WorkingDir"], "/srv");
    assert_eq!(config["config"]["User"], "nobody");
    assert_eq!(config["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
    assert_eq!(config["author"], "ops@example.com");
    let history = config["history"].as_array().unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history[1]["empty_layer"], true);
    assert_eq!(
        history[1]["created_by"],
        "/bin/sh -c #(nop) ENV GREETING=hello"
    );
    for key in ["id", "parent", "Size"] {
        assert!(
            config.get(key).is_none(),
            "v1's {key} is left in the config"
        );
    }

    // The second tag is the same image; the other repository's image shares
    // busybox's layers.
    let out = tokio::task::spawn_blocking(move || {
        let same = skopeo_pull(&env, "busybox:1.0");
        let app = skopeo_pull(&env, "team/app:v1");
        // podman checks every layer against the config's diff_ids.
        env.podman(&["pull", &format!("{}/team/app:v1", env.host)]);
        let inspect = env.podman(&["image", "inspect", &format!("{}/team/app:v1", env.host)]);
        // The pulled directories live as long as the environment.
        (same, app, inspect, env)
    })
    .await
    .unwrap();
    let (same, app, inspect, _env) = out;
    assert_eq!(same.manifest, busybox.manifest);
    let app_layers = app.layer_digests();
    assert_eq!(app_layers[..2], layers[..]);
    assert_eq!(gunzip(&app.blob(&app_layers[2])), fleet.app.layer);
    let inspect: Value = clients::stdout_json(&inspect);
    let podman = &inspect[0]["Config"];
    assert_eq!(podman["Cmd"], json!(["/srv/app"]));
    assert_eq!(podman["WorkingDir"], "/srv");
    assert_eq!(podman["User"], "nobody");
    assert!(podman["ExposedPorts"].get("8080/tcp").is_some(), "{podman}");
    assert!(
        podman["Env"]
            .as_array()
            .unwrap()
            .contains(&json!("GREETING=hello")),
        "{podman}"
    );

    // Everything is in place: a second run copies and writes nothing.
    let report = migrated(&backend, data.path(), &[]).await;
    assert!(
        report.contains("copied 0 layers (0 bytes); 4 copied by an earlier run")
            && report.contains("migrated 0 tags; 3 migrated by an earlier run"),
        "{report}"
    );
}

#[tokio::test]
async fn a_migration_that_could_not_read_everything_resumes_with_what_was_missing() {
    let backend = LegacyV1::start();
    let fleet = fleet();
    push(&backend, &fleet).await;
    let data = tempfile::tempdir().unwrap();

    // One layer's bytes no longer match the backend's checksum; another's
    // file is gone.
    let top_file = layer_file(&backend, &fleet.top.id);
    let mut damaged = fleet.top.layer.clone();
    let last = damaged.len() - 20;
    damaged[last] ^= 0xff;
    std::fs::write(&top_file, &damaged).unwrap();
    let app_file = layer_file(&backend, &fleet.app.id);
    std::fs::remove_file(&app_file).unwrap();

    let first = migrate(&backend, data.path(), &[]).await;
    let report = stdout(&first);
    assert_eq!(first.status.code(), Some(1), "{report}");
    assert!(report.contains("copied 2 layers"), "{report}");
    assert!(
        report.contains(&format!("failed image {}", fleet.top.id)) && report.contains("checksum"),
        "{report}"
    );
    assert!(
        report.contains(&format!("failed image {}", fleet.app.id)),
        "{report}"
    );
    for tag in ["busybox:latest", "busybox:1.0", "team/app:v1"] {
        assert!(report.contains(&format!("failed {tag}: ")), "{report}");
    }

    // No tag points at a partial image, and no upload was left behind.
    let server = ServerProcess::start(data.path(), &[]);
    let client = reqwest::Client::new();
    for path in ["/v2/busybox/manifests/latest", "/v2/team/app/manifests/v1"] {
        let res = client.get(server.at(path)).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    let uploads = data.path().join("uploads");
    let left: Vec<_> = std::fs::read_dir(&uploads)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "uploads left behind: {left:?}");
    drop(server);

    // Repaired, the next run copies the two missing layers and nothing else.
    std::fs::write(&top_file, &fleet.top.layer).unwrap();
    std::fs::write(&app_file, &fleet.app.layer).unwrap();
    let report = migrated(&backend, data.path(), &[]).await;
    assert!(
        report.contains("copied 2 layers") && report.contains("2 copied by an earlier run"),
        "{report}"
    );
    assert!(report.contains("migrated 3 tags;"), "{report}");
    let server = ServerProcess::start(data.path(), &[]);
    let manifest = manifest_of(&server, "team/app", "v1").await;
    let top_layer = manifest["layers"][1]["digest"].as_str().unwrap().to_owned();
    assert_eq!(top_layer, sha256(&fleet.top.layer));
    let blob = client
        .get(server.at(&format!("/v2/team/app/blobs/{top_layer}")))
        .send()
        .await
        .unwrap();
    assert_eq!(blob.status(), 200);
    assert_eq!(blob.bytes().await.unwrap(), fleet.top.layer);
}

#[tokio::test]
async fn a_killed_migration_resumes_with_the_layers_it_had_not_copied() {
    const LAYERS: usize = 6;
    let backend = LegacyV1::start();
    let mut images: Vec<Image> = Vec::new();
    for i in 0..LAYERS {
        // Gzip layers of a few MiB: stored as they are, so the copy costs
        // little beyond the transfer, and there is time to be interrupted.
        let text: String = (0..120_000)
            .map(|n| format!("layer {i} line {n}\n"))
            .collect();
        let layer = gzip(&tar(&format!("data/{i}.txt"), text.as_bytes()));
        let json = json!({"config": {"Cmd": ["/bin/true"]}});
        images.push(image(images.last(), layer, json));
    }
    let mut engine = Engine::new(&backend.url(), "Basic dXNlcjpwdw==", Auth::BasicEverywhere);
    let pushed = engine.push("big/layers", "latest", images).await;
    let data = tempfile::tempdir().unwrap();

    // Killed once the first layer is reported copied.
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(["migrate", "--from-v1", &backend.url(), "--jobs", "1"])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let copied_before = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut child = command.spawn().unwrap();
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        for line in stderr.lines() {
            if line.unwrap().starts_with("copied ") {
                child.kill().unwrap();
                break;
            }
        }
        child.wait().unwrap();
    })
    .await;
    copied_before.unwrap();

    let report = migrated(&backend, data.path(), &[]).await;
    // "copied N layers (B bytes); M copied by an earlier run"
    let number_after = |label: &str| -> usize {
        let (_, tail) = report
            .split_once(label)
            .unwrap_or_else(|| panic!("{report}"));
        let number = tail.split_whitespace().next().unwrap_or_default();
        number.parse().unwrap_or_else(|_| panic!("{report}"))
    };
    let (now, earlier) = (number_after("copied "), number_after("bytes); "));
    assert!(
        earlier >= 1,
        "the killed run's layer was copied again: {report}"
    );
    assert_eq!(now + earlier, LAYERS, "{report}");

    // The image is whole: every layer is served with the bytes pushed.
    let server = ServerProcess::start(data.path(), &[]);
    let client = reqwest::Client::new();
    let manifest = manifest_of(&server, "big/layers", "latest").await;
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), LAYERS);
    for (layer, image) in layers.iter().zip(&pushed.images) {
        let digest = layer["digest"].as_str().unwrap();
        assert_eq!(digest, sha256(&image.layer));
        let blob = client
            .get(server.at(&format!("/v2/big/layers/blobs/{digest}")))
            .send()
            .await
            .unwrap();
        assert_eq!(blob.bytes().await.unwrap(), image.layer);
    }
}

#[tokio::test]
async fn a_tag_pushed_over_v2_since_is_left_alone_unless_overwrite_is_asked() {
    clients::require("skopeo");
    let backend = LegacyV1::start();
    let fleet = fleet();
    push(&backend, &fleet).await;
    let data = tempfile::tempdir().unwrap();
    let first = migrate(&backend, data.path(), &[]).await;
    assert!(
        first.status.success(),
        "{}",
        clients::describe("migrate", &first)
    );

    // busybox:1.0 moved over v2 to the app image. The server reads every
    // tag from storage (staleness 0), so what the migrations below write
    // beside it shows at once rather than within the default 5 s.
    let config = data.path().join("fresh.toml");
    std::fs::write(&config, "[storage]\nstaleness_secs = 0\n").unwrap();
    let server = ServerProcess::start(data.path(), &["--config", config.to_str().unwrap()]);
    let env = ClientEnv::new(&server.host);
    let moved = tokio::task::spawn_blocking(move || {
        env.skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &env.docker_ref("team/app:v1"),
            &env.docker_ref("busybox:1.0"),
        ]);
        env
    });
    let _env = moved.await.unwrap();
    let digest_of = |server: &ServerProcess, path: &str| {
        let url = server.at(path);
        async move {
            let res = reqwest::Client::new()
                .head(url)
                .header("accept", image_manifest())
                .send()
                .await
                .unwrap();
            common::header_str(&res, "docker-content-digest").to_owned()
        }
    };
    let app = digest_of(&server, "/v2/team/app/manifests/v1").await;
    let latest = digest_of(&server, "/v2/busybox/manifests/latest").await;
    assert_eq!(digest_of(&server, "/v2/busybox/manifests/1.0").await, app);

    let again = migrate(&backend, data.path(), &["--repos", "library/*"]).await;
    let report = stdout(&again);
    assert!(again.status.success(), "{report}");
    assert!(
        report.contains("left alone busybox:1.0: the v2 tag holds another image"),
        "{report}"
    );
    assert!(
        report.contains("migrated 0 tags; 1 migrated by an earlier run"),
        "{report}"
    );
    assert_eq!(digest_of(&server, "/v2/busybox/manifests/1.0").await, app);

    let overwritten = migrate(
        &backend,
        data.path(),
        &["--repos", "busybox", "--overwrite"],
    )
    .await;
    let report = stdout(&overwritten);
    assert!(overwritten.status.success(), "{report}");
    assert!(report.contains("migrated 1 tags;"), "{report}");
    assert_eq!(
        digest_of(&server, "/v2/busybox/manifests/1.0").await,
        latest
    );

    // v1's name itself, when asked.
    let kept = migrate(
        &backend,
        data.path(),
        &["--repos", "busybox", "--keep-library-prefix"],
    )
    .await;
    assert!(kept.status.success(), "{}", stdout(&kept));
    assert_eq!(
        digest_of(&server, "/v2/library/busybox/manifests/1.0").await,
        latest
    );
}

#[tokio::test]
async fn a_missing_or_unreachable_legacy_registry_is_a_clear_error() {
    let data = tempfile::tempdir().unwrap();
    // Bound and closed at once: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cases: [(&[&str], i32, &str); 4] = [
        (&[], 2, "give --from-v1 URL or set v1.backend"),
        (&["--from-v1", "https://legacy.example.com"], 2, "http://"),
        (
            &["--from-v1", "http://127.0.0.1:1", "--repos", "team/a**"],
            1,
            "`**` must be a whole path segment",
        ),
        (
            &["--from-v1", &format!("http://{closed}")],
            1,
            "cannot list the legacy registry's repositories",
        ),
    ];
    for (args, code, says) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        command
            .arg("migrate")
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            // No configuration of the working directory's or the caller's.
            .current_dir(data.path())
            .env_remove("PORTCULLIS_CONFIG");
        let out = tokio::task::spawn_blocking(move || clients::output(command, None))
            .await
            .unwrap();
        let stderr = clients::stderr_of(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
