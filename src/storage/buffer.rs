//! `MappedBuffer`: a large write buffer in an anonymous mapping of its own,
//! for the bytes an upload gathers before they are written (the filesystem
//! driver's batches, the S3 driver's parts).
//!
//! Its bytes start on a page boundary (what direct writes need), its pages
//! are touched only as far as bytes fill it, and dropping it gives the
//! memory back to the system at once. From the heap, a freed buffer of
//! megabytes stays in an allocator arena (glibc raises its mmap threshold
//! after the first large free), raising the process's resident size by that
//! much per thread that ever held one: a 1 GiB push to S3 peaked 26 MiB
//! higher with parts from the heap.

use std::io;

pub struct MappedBuffer {
    map: std::ptr::NonNull<u8>,
    capacity: usize,
    len: usize,
}

// SAFETY: `MappedBuffer` owns its mapping exclusively, like a `Box<[u8]>`.
unsafe impl Send for MappedBuffer {}

impl MappedBuffer {
    /// An empty buffer of `capacity` bytes (at least one).
    pub fn new(capacity: usize) -> io::Result<Self> {
        let capacity = capacity.max(1);
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // involved. It is unmapped exactly once, in `drop`.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = std::ptr::NonNull::new(map.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            map,
            capacity,
            len: 0,
        })
    }

    fn buffer(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `capacity` bytes, readable and writable,
        // owned by `self` (anonymous memory reads as zeros until written).
        unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr(), self.capacity) }
    }

    /// Copies as much of `data` as fits; returns how much that was.
    pub fn fill(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(self.capacity - self.len);
        let at = self.len;
        self.buffer()[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// Empties it for reuse (its pages stay mapped).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The bytes filled so far.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: as in `buffer`; the first `len` bytes were written.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for MappedBuffer {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl Drop for MappedBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, `capacity` bytes, unmapped once.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.capacity) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_fills_to_capacity_and_starts_on_a_page() {
        let mut buffer = MappedBuffer::new(10_000).unwrap();
        assert_eq!(buffer.bytes().as_ptr() as usize % 4096, 0);
        assert_eq!(buffer.fill(&[7u8; 6_000]), 6_000);
        assert_eq!(buffer.fill(&[8u8; 6_000]), 4_000);
        assert!(buffer.is_full());
        assert_eq!(&buffer.bytes()[5_999..6_001], &[7, 8]);
        let shared = bytes::Bytes::from_owner(buffer);
        assert_eq!(shared.len(), 10_000);
    }
}
