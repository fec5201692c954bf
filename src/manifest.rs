//! Manifests: the four accepted media types and Docker schema 1
//! ([`schema1`]), parsed and checked before anything is stored. Pure
//! functions; storage decides what the references must resolve to.

pub mod schema1;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::reference::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Media types a manifest may be stored under.
pub const MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// Largest manifest accepted: the OCI spec's recommended floor for registries,
/// and what clients assume a registry takes.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ManifestError {
    #[error("not valid JSON of its media type: {0}")]
    Syntax(String),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("schemaVersion must be 2")]
    SchemaVersion,
    #[error("{0}")]
    Shape(&'static str),
    #[error(transparent)]
    Schema1(#[from] schema1::Schema1Error),
}

/// A content descriptor as it appears in manifests, indexes and the referrers list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

/// The fields of all four formats; which must or must not be present is
/// checked per media type in [`parse`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// A checked manifest: what it is and what it points at.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub media_type: String,
    /// Blobs that must be in the repository: config and distributable layers.
    pub blobs: Vec<Digest>,
    /// Manifests an index points at; they must be in the repository.
    pub children: Vec<Digest>,
    pub subject: Option<Descriptor>,
    /// `artifactType`, or for an image manifest without one, its config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
    /// A Docker schema 1 manifest's name, tag and signed payload.
    pub schema1: Option<schema1::Schema1>,
}

impl Manifest {
    /// The descriptor the referrers API lists for this manifest.
    pub fn referrer_descriptor(&self, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest,
            size,
            artifact_type: self.artifact_type.clone(),
            annotations: self.annotations.clone(),
            urls: None,
            platform: None,
        }
    }
}

/// The media type part of a `Content-Type` value, without parameters.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Layers clients are not expected to push: their content lives elsewhere.
fn is_non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
}

/// Parses and checks a manifest body pushed with the given `Content-Type`.
///
/// The media type comes from the header when it names a manifest type, else
/// from the body's `mediaType`, else from the shape (an OCI index has
/// `manifests`, an OCI image manifest `config`): clients that send a generic
/// `Content-Type` still get their manifest stored under its real type.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, ManifestError> {
    let header = content_type.map(essence).filter(|t| {
        !t.is_empty() && !matches!(*t, "application/json" | "application/octet-stream")
    });
    if let Some(h) = header.filter(|h| schema1::is_schema1(h)) {
        return Ok(schema1::parse(Some(h), body)?);
    }
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::Syntax(e.to_string()))?;
    // Engines up to 1.9 push schema 1 without a Content-Type, and schema 1
    // has no mediaType member: its schemaVersion is what tells.
    if header.is_none() && raw.media_type.is_none() && raw.schema_version == Some(1) {
        return Ok(schema1::parse(None, body)?);
    }

    let media_type = match (header, raw.media_type.as_deref()) {
        (Some(h), Some(b)) if h != b => {
            return Err(ManifestError::MediaTypeMismatch {
                header: h.to_owned(),
                body: b.to_owned(),
            });
        }
        (Some(h), _) => h.to_owned(),
        (None, Some(b)) => b.to_owned(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_owned(),
        (None, None) => OCI_MANIFEST.to_owned(),
    };
    if !MANIFEST_TYPES.contains(&media_type.as_str()) {
        return Err(ManifestError::UnsupportedMediaType(media_type));
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    // Docker's formats require mediaType in the body; OCI's make it optional.
    if raw.media_type.is_none()
        && matches!(media_type.as_str(), DOCKER_MANIFEST | DOCKER_MANIFEST_LIST)
    {
        return Err(ManifestError::Shape(
            "mediaType is required in a Docker manifest",
        ));
    }

    // The spec treats an empty `artifactType` as a missing one.
    let raw_artifact_type = raw.artifact_type.filter(|t| !t.is_empty());
    let is_index = matches!(media_type.as_str(), OCI_INDEX | DOCKER_MANIFEST_LIST);
    let (blobs, children, artifact_type) = if is_index {
        if raw.config.is_some() || raw.layers.is_some() {
            return Err(ManifestError::Shape("an index has no config or layers"));
        }
        let manifests = raw
            .manifests
            .ok_or(ManifestError::Shape("an index needs manifests"))?;
        let children = manifests.into_iter().map(|d| d.digest).collect();
        (Vec::new(), children, raw_artifact_type)
    } else {
        if raw.manifests.is_some() {
            return Err(ManifestError::Shape(
                "an image manifest has no manifests list",
            ));
        }
        let config = raw
            .config
            .ok_or(ManifestError::Shape("an image manifest needs config"))?;
        let layers = raw
            .layers
            .ok_or(ManifestError::Shape("an image manifest needs layers"))?;
        let artifact_type = raw_artifact_type.or_else(|| Some(config.media_type.clone()));
        let mut blobs = vec![config.digest];
        blobs.extend(
            layers
                .into_iter()
                .filter(|l| !is_non_distributable(&l.media_type))
                .map(|l| l.digest),
        );
        (blobs, Vec::new(), artifact_type)
    };

    Ok(Manifest {
        media_type,
        blobs,
        children,
        subject: raw.subject,
        artifact_type,
        annotations: raw.annotations,
        schema1: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Algorithm;
    use serde_json::json;

    fn d(s: &str) -> String {
        Algorithm::Sha256.digest_of(s.as_bytes()).to_string()
    }

    fn image(media_type: Option<&str>) -> serde_json::Value {
        let mut m = json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d("c"), "size": 1},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d("l"), "size": 1},
                {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", "digest": d("n"), "size": 1}
            ]
        });
        if let Some(t) = media_type {
            m["mediaType"] = json!(t);
        }
        m
    }

    #[test]
    fn image_manifest_requires_config_and_distributable_layers() {
        let body = image(Some(OCI_MANIFEST)).to_string();
        let m = parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(m.media_type, OCI_MANIFEST);
        let want: Vec<Digest> = [d("c"), d("l")]
            .iter()
            .map(|s| Digest::parse(s).unwrap())
            .collect();
        assert_eq!(m.blobs, want);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }

    #[test]
    fn media_type_from_header_body_or_shape() {
        let body = image(None).to_string();
        assert_eq!(
            parse(None, body.as_bytes()).unwrap().media_type,
            OCI_MANIFEST
        );
        let body = image(Some(DOCKER_MANIFEST)).to_string();
        assert_eq!(
            parse(Some("application/json; charset=utf-8"), body.as_bytes())
                .unwrap()
                .media_type,
            DOCKER_MANIFEST
        );
        let index = json!({"schemaVersion": 2, "manifests": []}).to_string();
        assert_eq!(parse(None, index.as_bytes()).unwrap().media_type, OCI_INDEX);
    }

    #[test]
    fn rejects() {
        let body = image(Some(OCI_MANIFEST)).to_string();
        assert!(matches!(
            parse(Some(DOCKER_MANIFEST), body.as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(
            parse(Some(OCI_MANIFEST), b"{"),
            Err(ManifestError::Syntax(_))
        ));
        assert!(matches!(
            parse(Some(OCI_MANIFEST), b"[]"),
            Err(ManifestError::Syntax(_))
        ));
        // Schema 1 by its type is checked as schema 1, and a schema 2 body
        // under that type is not one.
        assert!(matches!(
            parse(Some(schema1::SIGNED), image(None).to_string().as_bytes()),
            Err(ManifestError::Schema1(_))
        ));
        let docker_without_type = image(None).to_string();
        assert!(parse(Some(DOCKER_MANIFEST), docker_without_type.as_bytes()).is_err());
        let mut v1 = image(Some(OCI_MANIFEST));
        v1["schemaVersion"] = json!(1);
        assert_eq!(
            parse(None, v1.to_string().as_bytes()),
            Err(ManifestError::SchemaVersion)
        );
        let mut bad_digest = image(Some(OCI_MANIFEST));
        bad_digest["config"]["digest"] = json!("sha256:nothex");
        assert!(parse(None, bad_digest.to_string().as_bytes()).is_err());
        let mut negative = image(Some(OCI_MANIFEST));
        negative["config"]["size"] = json!(-1);
        assert!(parse(None, negative.to_string().as_bytes()).is_err());
        let index_with_layers =
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "layers": []});
        assert!(parse(None, index_with_layers.to_string().as_bytes()).is_err());
    }

    #[test]
    fn index_children_and_subject() {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "artifactType": "application/x.sig",
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": d("m"), "size": 3}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": d("s"), "size": 3},
            "annotations": {"a": "b"}
        });
        let m = parse(Some(OCI_INDEX), index.to_string().as_bytes()).unwrap();
        assert_eq!(m.children, vec![Digest::parse(&d("m")).unwrap()]);
        assert_eq!(m.subject.as_ref().unwrap().digest.to_string(), d("s"));
        let r = m.referrer_descriptor(Digest::parse(&d("x")).unwrap(), 10);
        assert_eq!(r.artifact_type.as_deref(), Some("application/x.sig"));
        assert_eq!(r.annotations.unwrap()["a"], "b");

        let mut untyped = index;
        untyped["artifactType"] = json!("");
        let m = parse(None, untyped.to_string().as_bytes()).unwrap();
        assert_eq!(m.artifact_type, None);
        let mut untyped = image(Some(OCI_MANIFEST));
        untyped["artifactType"] = json!("");
        let m = parse(None, untyped.to_string().as_bytes()).unwrap();
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
    }
}
