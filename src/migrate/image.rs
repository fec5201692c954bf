//! A tagged legacy image, as a Docker schema 2 image: the config built
//! from the v1 JSON of the tagged image and the history of its ancestry,
//! and the manifest listing the config and the layers that hold files.
//!
//! Both are serialized with sorted keys (serde_json's map) and fixed field
//! order, so the same legacy image always gives the same digests: a second
//! migration sees the tag already pointing at what it would write.

use serde::Serialize;
use serde_json::{Map, Value};

use super::layer::GZIP_LAYER;
use crate::reference::Digest;
use crate::storage::MigratedLayer;

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Fields of a v1 image JSON that describe the v1 graph or the v1 store,
/// not the image: a v2 config has none of them.
const V1_ONLY: [&str; 6] = ["id", "parent", "Size", "parent_id", "layer_id", "checksum"];

/// One image of the ancestry, base first: its v1 JSON and its stored layer.
pub struct Ancestor<'a> {
    pub json: &'a Value,
    pub layer: &'a MigratedLayer,
}

/// The schema 2 config of the image on top of `ancestry` (base first).
pub fn config(ancestry: &[Ancestor]) -> Result<Vec<u8>, String> {
    let top = ancestry.last().ok_or("an image with no ancestry")?;
    let mut config: Map<String, Value> = top
        .json
        .as_object()
        .ok_or("the image JSON is not an object")?
        .clone();
    for field in V1_ONLY {
        config.remove(field);
    }
    // What a config must say, where an old engine left it out.
    config
        .entry("architecture")
        .or_insert_with(|| Value::from("amd64"));
    config.entry("os").or_insert_with(|| Value::from("linux"));
    let history: Vec<Value> = ancestry.iter().map(history_entry).collect();
    let diff_ids: Vec<Value> = ancestry
        .iter()
        .filter(|a| !a.layer.empty)
        .map(|a| Value::from(a.layer.diff_id.to_string()))
        .collect();
    config.insert("history".into(), Value::Array(history));
    config.insert(
        "rootfs".into(),
        serde_json::json!({"type": "layers", "diff_ids": diff_ids}),
    );
    serde_json::to_vec(&config).map_err(|e| e.to_string())
}

/// The history line of one v1 image: when, by what command, by whom.
fn history_entry(ancestor: &Ancestor) -> Value {
    let json = ancestor.json;
    let mut entry = Map::new();
    if let Some(created) = json.get("created").filter(|v| v.is_string()) {
        entry.insert("created".into(), created.clone());
    }
    if let Some(author) = json
        .get("author")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        entry.insert("author".into(), author.clone());
    }
    // What the engine ran to make the image, as `docker history` shows it.
    let command = json
        .pointer("/container_config/Cmd")
        .and_then(Value::as_array)
        .map(|words| {
            words
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ")
        });
    if let Some(command) = command.filter(|c| !c.is_empty()) {
        entry.insert("created_by".into(), Value::from(command));
    }
    if let Some(comment) = json
        .get("comment")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        entry.insert("comment".into(), comment.clone());
    }
    if ancestor.layer.empty {
        entry.insert("empty_layer".into(), Value::from(true));
    }
    Value::Object(entry)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor<'a>,
    layers: Vec<Descriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor<'a> {
    media_type: &'a str,
    size: u64,
    digest: &'a Digest,
}

/// The schema 2 manifest of `config` and the layers of `ancestry` that hold files.
pub fn manifest(config: (&Digest, u64), ancestry: &[Ancestor]) -> Vec<u8> {
    let layers = ancestry
        .iter()
        .filter(|a| !a.layer.empty)
        .map(|a| Descriptor {
            media_type: if a.layer.media_type.is_empty() {
                GZIP_LAYER
            } else {
                &a.layer.media_type
            },
            size: a.layer.size,
            digest: &a.layer.digest,
        })
        .collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE,
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE,
            size: config.1,
            digest: config.0,
        },
        layers,
    };
    serde_json::to_vec_pretty(&manifest).expect("plain struct serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Algorithm;

    fn layer(n: u8, empty: bool) -> MigratedLayer {
        MigratedLayer {
            digest: Algorithm::Sha256.digest_of(&[n]),
            diff_id: Algorithm::Sha256.digest_of(&[n, n]),
            size: 100 + n as u64,
            media_type: GZIP_LAYER.into(),
            empty,
            repository: "library/app".into(),
        }
    }

    #[test]
    fn the_config_carries_the_top_images_settings_and_the_whole_history() {
        let base = serde_json::json!({
            "id": "aa", "created": "2015-01-01T00:00:00Z",
            "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ADD file:x in /"]},
            "Size": 5,
        });
        let meta = serde_json::json!({
            "id": "bb", "parent": "aa", "created": "2015-01-02T00:00:00Z",
            "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) ENV A=1"]},
        });
        let top = serde_json::json!({
            "id": "cc", "parent": "bb", "created": "2015-01-03T00:00:00Z",
            "author": "ops@example.org", "docker_version": "1.5.0",
            "config": {"Env": ["A=1"], "Cmd": ["/app"], "WorkingDir": "/srv",
                        "User": "app", "ExposedPorts": {"80/tcp": {}}},
            "container_config": {"Cmd": ["/bin/sh", "-c", "make"]},
            "architecture": "amd64", "os": "linux",
        });
        let layers = [layer(1, false), layer(2, true), layer(3, false)];
        let ancestry: Vec<Ancestor> = [&base, &meta, &top]
            .into_iter()
            .zip(&layers)
            .map(|(json, layer)| Ancestor { json, layer })
            .collect();
        let config: Value = serde_json::from_slice(&config(&ancestry).unwrap()).unwrap();
        assert_eq!(config["config"], top["config"]);
        assert_eq!(config["author"], "ops@example.org");
        assert_eq!(config["created"], "2015-01-03T00:00:00Z");
        for gone in V1_ONLY {
            assert!(config.get(gone).is_none(), "{gone}");
        }
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([layers[0].diff_id.to_string(), layers[2].diff_id.to_string()])
        );
        let history = config["history"].as_array().unwrap();
        assert_eq!(history.len(), 3);
        assert_eq!(history[1]["empty_layer"], true);
        assert_eq!(history[1]["created_by"], "/bin/sh -c #(nop) ENV A=1");
        assert!(history[0].get("empty_layer").is_none());

        let digest = Algorithm::Sha256.digest_of(b"config");
        let manifest: Value = serde_json::from_slice(&manifest((&digest, 9), &ancestry)).unwrap();
        assert_eq!(manifest["config"]["digest"], digest.to_string());
        let listed: Vec<&str> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap())
            .collect();
        assert_eq!(
            listed,
            [layers[0].digest.to_string(), layers[2].digest.to_string()]
        );
        // Parsed back by the registry's own manifest check.
        crate::manifest::parse(
            Some(MANIFEST_MEDIA_TYPE),
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
    }
}
