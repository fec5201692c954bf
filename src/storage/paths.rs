//! The one place storage keys are built. Nothing else in the crate spells a key.
//!
//! ```text
//! <root>/
//! ├── blobs/
//! │   └── <alg>/<hex[0..2]>/<hex>          content, immutable: layers, configs, manifests
//! ├── repositories/
//! │   └── <name>/                          any depth; a name component never starts with `_`
//! │       ├── _layers/<alg>/<hex>          link (empty): this repository may read that blob
//! │       ├── _manifests/
//! │       │   ├── revisions/<alg>/<hex>    link: a manifest of this repository; holds its media type
//! │       │   │                            (a signed schema 1 one: then the digest of its bytes' blob)
//! │       │   └── tags/<tag>               the digest the tag points at
//! │       └── _referrers/<alg>/<hex>/<alg>-<hex>
//! │                                        descriptor (JSON) of a manifest of this repository
//! │                                        whose `subject` is <alg>:<hex> (first part)
//! ├── uploads/
//! │   └── <uuid>/
//! │       ├── data                         bytes received so far
//! │       ├── info                         JSON: repository, owner (account), start time
//! │       └── hashstate                    JSON: offset + SHA-256 state at that offset, time written
//! ├── auth/
//! │   ├── revocations.json                 refresh tokens issued before these times are void
//! │   └── access-tokens/<id>/
//! │       ├── record.json                  a personal access token: owner, scopes, expiry, secret's hash
//! │       └── used                         when it was last used (seconds since the epoch)
//! └── v1/
//!     ├── images/<id>/<namespace>+<name>   (empty) this legacy v1 image belongs to that repository
//!     └── migrated/<id>                    JSON: the blob `migrate --from-v1` made of its layer
//! ```
//!
//! Every argument is an already validated newtype ([`RepoName`], [`Tag`],
//! [`Digest`], [`UploadId`], [`ImageId`]): none of them can hold `..`, `/` where it does not
//! belong, or an empty component, so no key can leave its subtree.

use uuid::Uuid;

use crate::reference::{Algorithm, Digest, ImageId, RepoName, Tag};

/// An upload session id: a UUID, parsed at the edge like every other name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UploadId(pub Uuid);

impl UploadId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(s: &str) -> Option<Self> {
        // Only the hyphenated lower-case form we hand out; anything else is
        // not one of our sessions.
        let id = Uuid::try_parse(s).ok()?;
        (id.hyphenated().to_string() == s).then_some(Self(id))
    }
}

impl Default for UploadId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for UploadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A personal access token's id: the public part of the token, 16 lower-case
/// hex digits, parsed at the edge like every other name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccessTokenId(String);

impl AccessTokenId {
    pub const LEN: usize = 16;

    pub fn new() -> Self {
        let mut bytes = [0u8; Self::LEN / 2];
        aws_lc_rs::rand::fill(&mut bytes).expect("the system's random source works");
        Self(hex::encode(bytes))
    }

    pub fn parse(s: &str) -> Option<Self> {
        let ok = s.len() == Self::LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for AccessTokenId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for AccessTokenId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub const BLOBS: &str = "blobs";
pub const REPOSITORIES: &str = "repositories";
pub const UPLOADS: &str = "uploads";

/// Name components reserved for the per-repository metadata; a valid
/// repository name component can never take these forms.
pub const LAYERS_DIR: &str = "_layers";
pub const MANIFESTS_DIR: &str = "_manifests";
pub const REFERRERS_DIR: &str = "_referrers";

pub fn blob_data(d: &Digest) -> String {
    format!(
        "{BLOBS}/{}/{}/{}",
        d.algorithm().as_str(),
        &d.hex()[..2],
        d.hex()
    )
}

pub fn repository(repo: &RepoName) -> String {
    format!("{REPOSITORIES}/{repo}")
}

pub fn layer_link(repo: &RepoName, d: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{repo}/{LAYERS_DIR}/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn manifest_revision(repo: &RepoName, d: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{repo}/{MANIFESTS_DIR}/revisions/{}/{}",
        d.algorithm().as_str(),
        d.hex()
    )
}

pub fn manifest_revisions(repo: &RepoName, alg: Algorithm) -> String {
    format!(
        "{REPOSITORIES}/{repo}/{MANIFESTS_DIR}/revisions/{}",
        alg.as_str()
    )
}

pub fn tags(repo: &RepoName) -> String {
    format!("{REPOSITORIES}/{repo}/{MANIFESTS_DIR}/tags")
}

pub fn tag(repo: &RepoName, tag: &Tag) -> String {
    format!("{REPOSITORIES}/{repo}/{MANIFESTS_DIR}/tags/{tag}")
}

pub fn referrers(repo: &RepoName, subject: &Digest) -> String {
    format!(
        "{REPOSITORIES}/{repo}/{REFERRERS_DIR}/{}/{}",
        subject.algorithm().as_str(),
        subject.hex()
    )
}

pub fn referrer(repo: &RepoName, subject: &Digest, referrer: &Digest) -> String {
    format!(
        "{}/{}",
        referrers(repo, subject),
        referrer_entry_name(referrer)
    )
}

/// The file name of a referrer entry: `<alg>-<hex>` (no `:` in keys, which
/// some object stores and file systems handle badly).
pub fn referrer_entry_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

/// The referrer digest an entry name written by [`referrer`] stands for.
pub fn parse_referrer_entry_name(name: &str) -> Option<Digest> {
    let (alg, hex) = name.split_once('-')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// The repositories a legacy v1 image is bound to, one entry each.
pub fn v1_image(id: &ImageId) -> String {
    format!("v1/images/{id}")
}

/// One binding: `/` in the name becomes `+`, which no repository name
/// holds, so the entry is one key component and reads back unchanged.
pub fn v1_binding(id: &ImageId, repo: &RepoName) -> String {
    format!("{}/{}", v1_image(id), repo.as_str().replace('/', "+"))
}

/// The repository of a [`v1_binding`] entry's name.
pub fn parse_v1_binding(name: &str) -> Option<RepoName> {
    RepoName::parse(&name.replace('+', "/")).ok()
}

/// What the migration off v1 copied of one legacy image (its layer's blob).
pub fn v1_migrated(id: &ImageId) -> String {
    format!("v1/migrated/{id}")
}

/// Refresh-token revocations, shared by every replica over the same storage.
pub fn revocations() -> String {
    "auth/revocations.json".to_owned()
}

/// Where personal access tokens are kept, one prefix per token.
pub fn access_tokens() -> String {
    "auth/access-tokens".to_owned()
}

pub fn access_token_record(id: &AccessTokenId) -> String {
    format!("auth/access-tokens/{id}/record.json")
}

pub fn access_token_used(id: &AccessTokenId) -> String {
    format!("auth/access-tokens/{id}/used")
}

pub fn upload(id: UploadId) -> String {
    format!("{UPLOADS}/{id}")
}

pub fn upload_data(id: UploadId) -> String {
    format!("{UPLOADS}/{id}/data")
}

pub fn upload_info(id: UploadId) -> String {
    format!("{UPLOADS}/{id}/info")
}

pub fn upload_hashstate(id: UploadId) -> String {
    format!("{UPLOADS}/{id}/hashstate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let repo = RepoName::parse("a/b/c").unwrap();
        let d = Algorithm::Sha256.digest_of(b"");
        let hex = d.hex().to_owned();
        assert_eq!(blob_data(&d), format!("blobs/sha256/e3/{hex}"));
        assert_eq!(
            layer_link(&repo, &d),
            format!("repositories/a/b/c/_layers/sha256/{hex}")
        );
        assert_eq!(
            tag(&repo, &Tag::parse("v1").unwrap()),
            "repositories/a/b/c/_manifests/tags/v1"
        );
        assert_eq!(
            parse_referrer_entry_name(&referrer_entry_name(&d)),
            Some(d.clone())
        );
        assert_eq!(parse_referrer_entry_name("sha256-../x"), None);
        assert_eq!(
            referrer(&repo, &d, &d),
            format!("repositories/a/b/c/_referrers/sha256/{hex}/sha256-{hex}")
        );
    }

    #[test]
    fn upload_ids() {
        let id = UploadId::new();
        assert_eq!(UploadId::parse(&id.to_string()), Some(id));
        assert_eq!(UploadId::parse("../../etc"), None);
        assert_eq!(UploadId::parse(&id.to_string().to_uppercase()), None);
        assert_eq!(UploadId::parse(&id.0.simple().to_string()), None);
    }
}
