//! Repository names, tags, digests and references: parsed once at the edge.
//!
//! Everything past the HTTP layer holds these newtypes, never raw strings, so a
//! value that reaches storage has already passed the spec's grammar. That is what
//! makes path tricks (`..`, `%2e`, empty components, upper case) impossible below
//! this module: none of them can be spelled in a valid name, tag or digest.

use std::fmt;

use sha2::Digest as _;

/// Why a name, tag or digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid repository name")]
    Name,
    #[error("invalid tag")]
    Tag,
    #[error("invalid digest")]
    Digest,
    #[error("unsupported digest algorithm")]
    Algorithm,
}

/// Longest repository name accepted. distribution and most clients cap the full
/// reference at 255 characters; a name can never be longer than that.
pub const MAX_NAME_LEN: usize = 255;

/// The distribution-spec's name grammar, checked by hand (the spec writes
/// it as a regex, `NAME_GRAMMAR` in the tests; every request's name is
/// checked, and a regex search cost more than the rest of routing):
/// components separated by `/`, each of `[a-z0-9]` runs joined by one `.`,
/// one or two `_`, or any number of `-`. So no component can be `.`, `..`,
/// empty, or begin with `_` (which the storage layout reserves).
fn is_name(s: &str) -> bool {
    s.split('/').all(is_component)
}

fn is_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if !bytes.first().is_some_and(|&b| alnum(b)) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        let run = bytes[i..].iter().take_while(|&&x| x == b).count();
        let separator = match b {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => false,
        };
        i += run;
        // A separator joins two runs: something alphanumeric follows it.
        if !separator || !bytes.get(i).is_some_and(|&x| alnum(x)) {
            return false;
        }
    }
    true
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`, the spec's tag grammar.
fn is_tag(s: &str) -> bool {
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    let bytes = s.as_bytes();
    bytes.len() <= 128
        && bytes.first().is_some_and(word)
        && bytes[1..]
            .iter()
            .all(|b| word(b) || *b == b'.' || *b == b'-')
}

/// A validated repository name, e.g. `library/alpine` or `a/b/c/d/e/f/g/h`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.len() > MAX_NAME_LEN || !is_name(s) {
            return Err(ReferenceError::Name);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A legacy v1 image id: lower-case hex, 64 digits (or the 16 of the
/// oldest clients' short form), so it is safe in a storage key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(String);

impl ImageId {
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        (hex && (s.len() == 64 || s.len() == 16)).then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if !is_tag(s) {
            return Err(ReferenceError::Tag);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The digest algorithms accepted everywhere a digest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    /// The digest of `data` under this algorithm.
    pub fn digest_of(self, data: &[u8]) -> Digest {
        match self {
            Algorithm::Sha256 => Digest::from_sha256(&sha2::Sha256::digest(data)),
            Algorithm::Sha512 => Digest::from_sha512(&sha2::Sha512::digest(data)),
        }
    }
}

/// A validated content digest: `sha256:<64 hex>` or `sha512:<128 hex>`, lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let (alg, hex) = s.split_once(':').ok_or(ReferenceError::Digest)?;
        // The spec's general grammar first: an unknown but well-formed algorithm
        // is "unsupported", anything else is simply not a digest.
        let well_formed_alg = !alg.is_empty()
            && alg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        if !well_formed_alg || hex.is_empty() {
            return Err(ReferenceError::Digest);
        }
        let algorithm = Algorithm::from_name(alg).ok_or(ReferenceError::Algorithm)?;
        if hex.len() != algorithm.hex_len()
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ReferenceError::Digest);
        }
        Ok(Self {
            algorithm,
            hex: hex.to_owned(),
        })
    }

    /// The digest with the given raw SHA-256 output.
    pub fn from_sha256(raw: &[u8]) -> Self {
        Self {
            algorithm: Algorithm::Sha256,
            hex: hex::encode(raw),
        }
    }

    /// The digest with the given raw SHA-512 output.
    pub fn from_sha512(raw: &[u8]) -> Self {
        Self {
            algorithm: Algorithm::Sha512,
            hex: hex::encode(raw),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded part after the colon (lower-case hex).
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What follows `/manifests/`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// A reference containing `:` is a digest, anything else a tag (a tag cannot
    /// contain `:`), so each error is reported against the grammar the client meant.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    /// The grammars as the distribution spec writes them, anchored.
    pub const NAME_GRAMMAR: &str =
        r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$";
    const TAG_GRAMMAR: &str = r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";

    /// The hand-written checks against the spec's regexes, on strings made
    /// of the characters that matter (and a few that never do).
    #[test]
    fn the_checks_agree_with_the_spec_grammar() {
        let name = regex::Regex::new(NAME_GRAMMAR).unwrap();
        let tag = regex::Regex::new(TAG_GRAMMAR).unwrap();
        let alphabet = b"ab0Z._-/_-.:% ";
        let mut rng = rand::rng();
        for _ in 0..200_000 {
            let len = rng.random_range(0..12);
            let s: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
                .collect();
            assert_eq!(is_name(&s), name.is_match(&s), "name {s:?}");
            assert_eq!(is_tag(&s), tag.is_match(&s), "tag {s:?}");
        }
        for long in [127, 128, 129] {
            let s = format!("_{}", "a".repeat(long - 1));
            assert_eq!(is_tag(&s), tag.is_match(&s), "tag of {long}");
        }
    }

    #[test]
    fn names() {
        for ok in [
            "a",
            "library/alpine",
            "a/b/c/d/e/f/g/h",
            "a.b_c__d---e/f0",
            "0/1",
        ] {
            assert!(RepoName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "..",
            "a/../b",
            "a/./b",
            "%2e",
            "a/%2e%2e/b",
            "_a",
            "a_",
            "a___b",
            "a/_layers",
            "a b",
            "a\0b",
            "a\\b",
            "é",
        ] {
            assert_eq!(RepoName::parse(bad), Err(ReferenceError::Name), "{bad:?}");
        }
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.0", "_x", "A-b.C_d", &"t".repeat(128)] {
            assert!(Tag::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "..", "a:b", &"t".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests() {
        let d = Algorithm::Sha256.digest_of(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::parse(&d.to_string()), Ok(d));
        let d512 = Algorithm::Sha512.digest_of(b"abc");
        assert_eq!(Digest::parse(&d512.to_string()), Ok(d512));
        assert_eq!(Digest::parse("md5:abc"), Err(ReferenceError::Algorithm));
        for bad in [
            "sha256",
            "sha256:",
            "sha256:abc",
            &format!("sha256:{}", "A".repeat(64)),
            &format!("sha256:{}", "g".repeat(64)),
            &format!("sha512:{}", "a".repeat(64)),
            "sha256:../../etc",
            ":abc",
        ] {
            assert_eq!(Digest::parse(bad), Err(ReferenceError::Digest), "{bad:?}");
        }
    }

    #[test]
    fn references() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        assert!(matches!(
            Reference::parse(&Algorithm::Sha256.digest_of(b"x").to_string()),
            Ok(Reference::Digest(_))
        ));
        assert_eq!(Reference::parse("sha256:xyz"), Err(ReferenceError::Digest));
    }
}
