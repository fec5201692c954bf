//! An old engine's v1 calls, for the tests: a push and a pull in the request
//! order of Docker engines 1.5–1.9 (`registry/session.go` of those
//! releases), each step asserting the status an engine needs to go on.
//!
//! Engines authenticate one of two ways: over HTTPS to a standalone
//! registry they send Basic credentials on every request
//! ([`Auth::BasicEverywhere`]); otherwise Basic only on the calls marked
//! `X-Docker-Token: true` (the first of a push or a pull), then
//! `Authorization: Token <X-Docker-Token>` on the others, sent to the host
//! `X-Docker-Endpoints` names ([`Auth::TokenFlow`]).

use reqwest::StatusCode;

use super::sha256;

#[derive(Clone, Copy, Debug)]
pub enum Auth {
    BasicEverywhere,
    TokenFlow,
}

/// One image of a push: its id, parent, JSON and layer (a tar).
pub struct Image {
    pub id: String,
    pub json: Vec<u8>,
    pub layer: Vec<u8>,
}

/// What a push sent: base first, the tagged image last.
pub struct Pushed {
    pub images: Vec<Image>,
}

impl Pushed {
    /// The tagged (top) image's id.
    pub fn id(&self) -> &str {
        &self.images.last().expect("an image").id
    }
}

/// `count` images, each the parent of the next, with small tar layers
/// whose bytes differ per image.
pub fn images(count: usize) -> Vec<Image> {
    let mut out: Vec<Image> = Vec::new();
    for i in 0..count {
        // A v1 image id is 64 hex digits, random as engines make them.
        let id = sha256(uuid::Uuid::new_v4().as_bytes())["sha256:".len()..].to_owned();
        let mut json = serde_json::json!({
            "id": id,
            "created": "2015-02-10T00:00:00Z",
            "container_config": {"Cmd": ["/bin/sh"]},
            "docker_version": "1.5.0",
            "architecture": "amd64",
            "os": "linux",
        });
        if let Some(parent) = out.last() {
            json["parent"] = parent.id.clone().into();
        }
        let layer = tar(
            &format!("file{i}.txt"),
            format!("layer {i} of {id}\n").as_bytes(),
        );
        out.push(Image {
            id,
            json: serde_json::to_vec(&json).unwrap(),
            layer,
        });
    }
    out
}

/// A one-file tar archive.
pub fn tar(name: &str, content: &[u8]) -> Vec<u8> {
    let mut out = super::oci::tar_header(name, content.len()).to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
    out
}

/// The checksum engines 1.5–1.9 send (`X-Docker-Checksum-Payload`):
/// SHA-256 of the JSON, a newline and the layer.
pub fn checksum(image: &Image) -> String {
    let mut bytes = image.json.clone();
    bytes.push(b'\n');
    bytes.extend_from_slice(&image.layer);
    sha256(&bytes)
}

/// An engine talking to the registry at `base` (`http://host:port`) with
/// Basic credentials `basic` (a full `Authorization` value).
pub struct Engine {
    pub client: reqwest::Client,
    pub base: String,
    pub basic: String,
    pub auth: Auth,
    /// The `X-Docker-Token` of the current push or pull.
    token: Option<String>,
    /// Where image calls go (`X-Docker-Endpoints`), once told.
    endpoint: Option<String>,
}

const AGENT: &str = "docker/1.5.0 go/go1.4.1 git-commit/a8a31ef kernel/4.19.0 os/linux arch/amd64";

impl Engine {
    pub fn new(base: &str, basic: &str, auth: Auth) -> Self {
        Self {
            client: reqwest::Client::builder()
                .user_agent(AGENT)
                .build()
                .unwrap(),
            base: base.to_owned(),
            basic: basic.to_owned(),
            auth,
            token: None,
            endpoint: None,
        }
    }

    /// A request to `path`, authorized as the step needs: `first` marks the
    /// `X-Docker-Token: true` call that starts a push or a pull.
    fn request(&self, method: reqwest::Method, path: &str, first: bool) -> reqwest::RequestBuilder {
        let image_call = path.starts_with("/v1/images/");
        let base = match (&self.endpoint, image_call) {
            (Some(host), true) => format!("http://{host}"),
            _ => self.base.clone(),
        };
        let request = self.client.request(method, format!("{base}{path}"));
        match (self.auth, first, &self.token) {
            (Auth::TokenFlow, true, _) => request
                .header("authorization", &self.basic)
                .header("x-docker-token", "true"),
            (Auth::TokenFlow, false, Some(token)) => {
                request.header("authorization", format!("Token {token}"))
            }
            _ => request.header("authorization", &self.basic),
        }
    }

    /// Sends `request` and asserts its status is `expect`; remembers a
    /// token and an endpoint it was given.
    async fn step(
        &mut self,
        request: reqwest::RequestBuilder,
        what: &str,
        expect: StatusCode,
    ) -> reqwest::Response {
        let res = request.send().await.unwrap();
        if let Some(token) = res.headers().get("x-docker-token") {
            self.token = Some(token.to_str().unwrap().to_owned());
        }
        if let Some(endpoint) = res.headers().get("x-docker-endpoints") {
            self.endpoint = Some(endpoint.to_str().unwrap().to_owned());
        }
        assert_eq!(res.status(), expect, "{what}");
        res
    }

    /// The push start alone (`PUT /v1/repositories/<repo>/` with the image
    /// list), for tests of its refusals: its status.
    pub async fn start_push(&mut self, repo: &str, ids: &[&str]) -> StatusCode {
        let list: Vec<_> = ids.iter().map(|id| serde_json::json!({"id": id})).collect();
        let request = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/repositories/{repo}/"),
                true,
            )
            .json(&list);
        request.send().await.unwrap().status()
    }

    /// Pushes `images` to `repo` tagged `tag`, as engines do.
    pub async fn push(&mut self, repo: &str, tag: &str, images: Vec<Image>) -> Pushed {
        self.token = None;
        let list: Vec<_> = images
            .iter()
            .map(|i| serde_json::json!({"id": i.id}))
            .collect();
        let start = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/repositories/{repo}/"),
                true,
            )
            .json(&list);
        self.step(start, "push start", StatusCode::OK).await;
        for image in &images {
            let id = &image.id;
            let exists = self.request(
                reqwest::Method::GET,
                &format!("/v1/images/{id}/json"),
                false,
            );
            self.step(exists, "GET json before the upload", StatusCode::NOT_FOUND)
                .await;
            let json = self
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/images/{id}/json"),
                    false,
                )
                .header("content-type", "application/json")
                .body(image.json.clone());
            self.step(json, "PUT json", StatusCode::OK).await;
            let layer = self
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/images/{id}/layer"),
                    false,
                )
                .header("content-type", "application/octet-stream")
                .body(image.layer.clone());
            self.step(layer, "PUT layer", StatusCode::OK).await;
            let sum = self
                .request(
                    reqwest::Method::PUT,
                    &format!("/v1/images/{id}/checksum"),
                    false,
                )
                .header("x-docker-checksum", "tarsum+sha256:unused")
                .header("x-docker-checksum-payload", checksum(image));
            self.step(sum, "PUT checksum", StatusCode::OK).await;
        }
        let top = &images.last().expect("an image").id;
        let tagging = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/repositories/{repo}/tags/{tag}"),
                false,
            )
            .json(top);
        self.step(tagging, "PUT tag", StatusCode::OK).await;
        let done: Vec<_> = images
            .iter()
            .map(|i| serde_json::json!({"id": i.id, "checksum": checksum(i)}))
            .collect();
        let end = self
            .request(
                reqwest::Method::PUT,
                &format!("/v1/repositories/{repo}/images"),
                true,
            )
            .json(&done);
        self.step(end, "push end", StatusCode::NO_CONTENT).await;
        Pushed { images }
    }

    /// Pulls `repo:tag` as engines do; the layers of its ancestry, base
    /// first.
    pub async fn pull(&mut self, repo: &str, tag: &str) -> Vec<Vec<u8>> {
        self.token = None;
        let start = self.request(
            reqwest::Method::GET,
            &format!("/v1/repositories/{repo}/images"),
            true,
        );
        self.step(start, "pull start", StatusCode::OK).await;
        let tags = self.request(
            reqwest::Method::GET,
            &format!("/v1/repositories/{repo}/tags"),
            false,
        );
        let tags: serde_json::Value = self
            .step(tags, "GET tags", StatusCode::OK)
            .await
            .json()
            .await
            .unwrap();
        let top = tags[tag].as_str().expect("the tag").to_owned();
        let ancestry = self.request(
            reqwest::Method::GET,
            &format!("/v1/images/{top}/ancestry"),
            false,
        );
        let ancestry: Vec<String> = self
            .step(ancestry, "GET ancestry", StatusCode::OK)
            .await
            .json()
            .await
            .unwrap();
        let mut layers = Vec::new();
        for id in ancestry.iter().rev() {
            let json = self.request(
                reqwest::Method::GET,
                &format!("/v1/images/{id}/json"),
                false,
            );
            self.step(json, "GET json", StatusCode::OK).await;
            let layer = self.request(
                reqwest::Method::GET,
                &format!("/v1/images/{id}/layer"),
                false,
            );
            let body = self
                .step(layer, "GET layer", StatusCode::OK)
                .await
                .bytes()
                .await
                .unwrap();
            layers.push(body.to_vec());
        }
        layers
    }

    /// The status of `GET /v1/images/<id>/layer` with this engine's
    /// credentials (its token, after a push or pull start).
    pub async fn layer_status(&self, id: &str) -> StatusCode {
        let request = self.request(
            reqwest::Method::GET,
            &format!("/v1/images/{id}/layer"),
            false,
        );
        request.send().await.unwrap().status()
    }
}

/// One image pushed to `repo:latest` by an engine in the token flow.
pub async fn push_one(base: &str, basic: &str, repo: &str) -> Image {
    let mut engine = Engine::new(base, basic, Auth::TokenFlow);
    let mut pushed = engine.push(repo, "latest", images(1)).await;
    pushed.images.pop().expect("the image")
}
