//! One legacy layer turned into a v2 layer blob on its way through, never
//! held whole: the bytes are hashed, checked and (for a plain tar)
//! compressed chunk by chunk, and what comes out goes straight to storage.
//!
//! What v1 engines pushed is usually a plain tar (they compressed nothing);
//! some pushed gzip. A gzip layer is stored byte for byte. A plain tar is
//! stored gzip-compressed, so that the manifest carries the one layer media
//! type every v2 client pulls (`…rootfs.diff.tar.gzip`; the uncompressed
//! Docker type is not understood by every client); its files are byte for
//! byte the pushed ones, and `diff_id` is the pushed tar's digest. The
//! compression has no timestamp and a fixed level, so the same layer always
//! becomes the same blob: a second migration finds it stored already.

use std::io::{self, Write};

use bytes::Bytes;
use flate2::Compression;
use flate2::write::{GzEncoder, MultiGzDecoder};
use sha2::{Digest as _, Sha256};

use crate::reference::Digest;

pub const GZIP_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What a layer turned out to be, once all of it went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted {
    /// Digest and size of the bytes handed to storage.
    pub digest: Digest,
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// No byte of the uncompressed tar is set: a tar with no entries.
    pub empty: bool,
    /// The backend's own checksum (`sha256(json + "\n" + layer)`), computed
    /// over the bytes as they arrived, for [`Converter::finish`]'s check.
    pub checksum: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayerError {
    #[error(
        "the layer is compressed with {0}, which the migration does not read (gzip and plain tar only)"
    )]
    Compression(&'static str),
    #[error("the layer is not a tar archive")]
    NotTar,
    #[error("the layer's gzip stream is broken: {0}")]
    Gzip(String),
}

/// The uncompressed side: hashed, its first block kept to check that it is
/// a tar, and whether anything in it is set.
struct Tar {
    hash: Sha256,
    first: Vec<u8>,
    all_zero: bool,
}

impl Tar {
    fn new() -> Self {
        Self {
            hash: Sha256::new(),
            first: Vec::with_capacity(BLOCK),
            all_zero: true,
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        if self.first.len() < BLOCK {
            let n = (BLOCK - self.first.len()).min(bytes.len());
            self.first.extend_from_slice(&bytes[..n]);
        }
        if self.all_zero {
            self.all_zero = bytes.iter().all(|&b| b == 0);
        }
    }
}

impl Write for Tar {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.take(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const BLOCK: usize = 512;

enum Kind {
    /// Fewer than the two bytes that tell gzip from tar have arrived.
    Unknown(Vec<u8>),
    /// Stored as it is; decompressed only to hash and check the tar.
    Gzip(MultiGzDecoder<Tar>),
    /// Compressed on the way; the encoder's output is drained per chunk.
    Tar(Box<Tar>, Blocks),
}

/// Turns the chunks of one legacy layer into the chunks of its v2 blob.
pub struct Converter {
    kind: Kind,
    /// The backend's checksum over the JSON, a newline and the layer.
    checksum: Sha256,
    stored: Sha256,
    stored_len: u64,
}

impl Converter {
    /// `json` is the image's JSON exactly as the backend serves it (its
    /// checksum covers those bytes).
    pub fn new(json: &[u8]) -> Self {
        let mut checksum = Sha256::new();
        checksum.update(json);
        checksum.update(b"\n");
        Self {
            kind: Kind::Unknown(Vec::new()),
            checksum,
            stored: Sha256::new(),
            stored_len: 0,
        }
    }

    /// Takes the next chunk of the layer; returns the bytes to store next
    /// (often empty while the compressor fills its window).
    pub fn push(&mut self, chunk: &[u8]) -> Result<Bytes, LayerError> {
        self.checksum.update(chunk);
        let out = match &mut self.kind {
            Kind::Unknown(head) => {
                head.extend_from_slice(chunk);
                if head.len() < 2 {
                    return Ok(Bytes::new());
                }
                let head = std::mem::take(head);
                self.kind = decide(&head)?;
                self.feed(&head)?
            }
            _ => self.feed(chunk)?,
        };
        self.stored.update(&out);
        self.stored_len += out.len() as u64;
        Ok(out)
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<Bytes, LayerError> {
        match &mut self.kind {
            Kind::Unknown(_) => unreachable!("decided before feeding"),
            Kind::Gzip(decoder) => {
                decoder
                    .write_all(bytes)
                    .map_err(|e| LayerError::Gzip(e.to_string()))?;
                Ok(Bytes::copy_from_slice(bytes))
            }
            Kind::Tar(tar, blocks) => {
                tar.take(bytes);
                Ok(blocks.push(bytes))
            }
        }
    }

    /// The end of the layer: the last bytes to store and what the layer was.
    pub fn finish(mut self) -> Result<(Bytes, Converted), LayerError> {
        if let Kind::Unknown(head) = &mut self.kind {
            // Zero or one byte in all: no gzip, so judged as a tar.
            let head = std::mem::take(head);
            self.kind = Kind::Tar(Box::new(Tar::new()), Blocks::new());
            let out = self.feed(&head)?;
            self.stored.update(&out);
            self.stored_len += out.len() as u64;
        }
        let (tail, tar) = match self.kind {
            Kind::Unknown(_) => unreachable!("decided above"),
            Kind::Gzip(decoder) => {
                let tar = decoder
                    .finish()
                    .map_err(|e| LayerError::Gzip(e.to_string()))?;
                (Bytes::new(), tar)
            }
            Kind::Tar(tar, blocks) => (blocks.finish(), *tar),
        };
        if !tar.all_zero && !is_tar_header(&tar.first) {
            return Err(LayerError::NotTar);
        }
        self.stored.update(&tail);
        let size = self.stored_len + tail.len() as u64;
        let converted = Converted {
            digest: Digest::from_sha256(&self.stored.finalize()),
            size,
            diff_id: Digest::from_sha256(&tar.hash.finalize()),
            empty: tar.all_zero,
            checksum: format!("sha256:{}", hex::encode(self.checksum.finalize())),
        };
        Ok((tail, converted))
    }
}

/// The compressor, fed in blocks of one fixed size whatever the chunks the
/// network delivered: the deflate stream depends on how its input was cut
/// (seen: the same tar fed 7 and 4096 bytes at a time compressed
/// differently), and the same layer must always become the same blob.
struct Blocks {
    pending: Vec<u8>,
    encoder: GzEncoder<Vec<u8>>,
}

const COMPRESS_BLOCK: usize = 64 * 1024;

impl Blocks {
    fn new() -> Self {
        // `GzEncoder::new` writes no modification time and no file name.
        // Level 1: a migration moves whole registries, and the other levels
        // cost several times the CPU for a few per cent of size.
        Self {
            pending: Vec::with_capacity(COMPRESS_BLOCK),
            encoder: GzEncoder::new(Vec::new(), Compression::fast()),
        }
    }

    /// Takes bytes; returns the compressed bytes ready so far.
    fn push(&mut self, mut bytes: &[u8]) -> Bytes {
        while !bytes.is_empty() {
            let n = (COMPRESS_BLOCK - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.pending.len() == COMPRESS_BLOCK {
                self.encoder
                    .write_all(&self.pending)
                    .expect("writing to a Vec");
                self.pending.clear();
            }
        }
        Bytes::from(std::mem::take(self.encoder.get_mut()))
    }

    fn finish(mut self) -> Bytes {
        self.encoder
            .write_all(&self.pending)
            .expect("writing to a Vec");
        Bytes::from(self.encoder.finish().expect("writing to a Vec"))
    }
}

/// How the layer is stored, from its first bytes.
fn decide(head: &[u8]) -> Result<Kind, LayerError> {
    match head {
        [0x1f, 0x8b, ..] => Ok(Kind::Gzip(MultiGzDecoder::new(Tar::new()))),
        [b'B', b'Z', ..] => Err(LayerError::Compression("bzip2")),
        [0xfd, b'7', ..] => Err(LayerError::Compression("xz")),
        [0x28, 0xb5, ..] => Err(LayerError::Compression("zstd")),
        _ => Ok(Kind::Tar(Box::new(Tar::new()), Blocks::new())),
    }
}

/// Whether `block` is a tar header: its checksum field (octal, the sum of
/// the header's bytes with the field itself read as spaces) matches.
/// Holds for every tar format (v7, ustar, GNU, pax), with or without magic.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < BLOCK {
        return false;
    }
    let field = &block[148..156];
    let recorded = std::str::from_utf8(field)
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| u32::from_str_radix(s, 8).ok());
    let sum: u32 = block[..BLOCK]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    recorded == Some(sum)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// A one-file tar, as v1 engines pushed layers.
    fn tar(content: &[u8]) -> Vec<u8> {
        let mut header = [0u8; BLOCK];
        header[..8].copy_from_slice(b"file.txt");
        header[100..107].copy_from_slice(b"0000644");
        header[124..135].copy_from_slice(format!("{:011o}", content.len()).as_bytes());
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let mut out = header.to_vec();
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK + 2 * BLOCK, 0);
        out
    }

    fn convert(
        json: &[u8],
        layer: &[u8],
        chunk: usize,
    ) -> Result<(Vec<u8>, Converted), LayerError> {
        let mut converter = Converter::new(json);
        let mut stored = Vec::new();
        for piece in layer.chunks(chunk.max(1)) {
            stored.extend_from_slice(&converter.push(piece)?);
        }
        let (tail, converted) = converter.finish()?;
        stored.extend_from_slice(&tail);
        Ok((stored, converted))
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn sha256(bytes: &[u8]) -> Digest {
        Digest::from_sha256(&Sha256::digest(bytes))
    }

    #[test]
    fn a_plain_tar_is_stored_compressed_with_its_files_unchanged() {
        let layer = tar(b"hello from v1\n");
        let (stored, converted) = convert(b"{}", &layer, 7).unwrap();
        assert_eq!(gunzip(&stored), layer);
        assert_eq!(converted.digest, sha256(&stored));
        assert_eq!(converted.size, stored.len() as u64);
        assert_eq!(converted.diff_id, sha256(&layer));
        assert!(!converted.empty);
        let mut payload = b"{}\n".to_vec();
        payload.extend_from_slice(&layer);
        assert_eq!(converted.checksum, sha256(&payload).to_string());
        // The same layer, cut differently, becomes the same blob.
        let (again, _) = convert(b"{}", &layer, 4096).unwrap();
        assert_eq!(again, stored);
    }

    #[test]
    fn a_gzip_layer_is_stored_byte_for_byte() {
        let layer = tar(b"compressed by the engine\n");
        let mut gz = GzEncoder::new(Vec::new(), Compression::best());
        gz.write_all(&layer).unwrap();
        let gz = gz.finish().unwrap();
        let (stored, converted) = convert(b"{}", &gz, 1).unwrap();
        assert_eq!(stored, gz);
        assert_eq!(converted.digest, sha256(&gz));
        assert_eq!(converted.diff_id, sha256(&layer));
    }

    #[test]
    fn an_empty_tar_and_an_empty_body_are_empty_layers() {
        for layer in [vec![0u8; 1024], Vec::new(), vec![0u8; 1]] {
            let (_, converted) = convert(b"{}", &layer, 100).unwrap();
            assert!(converted.empty, "{} bytes", layer.len());
            assert_eq!(converted.diff_id, sha256(&layer));
        }
    }

    #[test]
    fn what_is_not_a_tar_or_a_readable_gzip_is_refused() {
        assert_eq!(
            convert(b"{}", &[b'x'; 2048], 100).unwrap_err(),
            LayerError::NotTar
        );
        assert_eq!(
            convert(b"{}", b"BZh91AY&SY", 3).unwrap_err(),
            LayerError::Compression("bzip2")
        );
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        gz.write_all(&tar(&[7; 10_000])).unwrap();
        let gz = gz.finish().unwrap();
        let truncated = &gz[..gz.len() / 2];
        assert!(matches!(
            convert(b"{}", truncated, 64),
            Err(LayerError::Gzip(_))
        ));
    }
}
