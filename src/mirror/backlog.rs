//! Where queued jobs' records live while they wait for the mirror's worker: copied out of the
//! request's read buffer ([`super::Mirror::submit`]) into large chunks of the backlog's own, one
//! job after another.
//!
//! ```text
//!   Kafka path ── copy(records) ──▶ [ job │ job │ job │ … │ free ]  chunk: 4 MiB, huge pages
//!                                     ▲ Bytes (a handle on the chunk)
//!   worker ── expand, drop ───────────┘ with its last job, the chunk is spare (≤ 8) or unmapped
//! ```
//!
//! Why not an allocation per job? The allocator hands each job memory the process has not
//! touched lately (the worker frees jobs on another thread, and idle memory goes back to the
//! kernel), so the kernel zeroes and maps every 4 KiB page of it at its first touch: a fault per
//! page, on the Kafka path, about 2.3 µs each on the benchmark machine against 0.07 µs to copy
//! the page (BENCHMARKS.md). Here a chunk asks for transparent huge pages (`MADV_HUGEPAGE`, a fault
//! per 2 MiB), and a chunk whose jobs are done is kept for the next ones ([`SPARE`] at most):
//! a mirror that keeps pace with the producer fills the same few chunks over and over. The
//! allocator itself is built without huge pages (they cost more than they saved when it hands
//! memory back and takes it again, BENCHMARKS.md "Huge pages").
//!
//! Memory stays bounded. Every copy is a queued job, charged to the mirror's buffer (the queue's
//! place is taken before the copy). A chunk lives while any of its jobs does, and the worker takes
//! jobs in about the order they were copied, so chunks are freed in that order too. Beyond the
//! bytes charged, the backlog holds the unused end of each chunk (under a quarter of it: a job
//! larger than [`LARGEST`] is allocated on its own), the share of done jobs in the oldest chunks,
//! the current chunk and the spare ones: at most a third more than charged, plus about ten chunks.
//! Spare chunks are never more than one beyond those in use, so a backlog that drains unmaps as
//! it goes: idle, it keeps the current chunk and two spare ones (12 MiB).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// The size of a chunk: two huge pages.
pub const CHUNK: usize = 4 << 20;
/// Jobs larger than this are allocated on their own.
pub const LARGEST: usize = CHUNK / 4;
const HUGE_PAGE: usize = 2 << 20;

/// Chunks kept for reuse once their jobs are done, at most; and never more than one beyond the
/// chunks in use, so a backlog that drains gives its memory back as it goes.
const SPARE: usize = 8;

/// The backlog's current chunk, shared by every connection's submits, and the spare chunks.
#[derive(Default)]
pub struct Backlog {
    current: Mutex<Option<(Arc<Chunk>, usize)>>,
    spare: Arc<Spare>,
}

/// Mapped chunks no job uses, kept for the next ones; unmapped with the backlog.
#[derive(Default)]
struct Spare {
    chunks: Mutex<Vec<Mapping>>,
    /// Chunks in use (jobs or the current one hold them).
    live: AtomicUsize,
}

/// The start of a chunk's mapping.
struct Mapping(NonNull<u8>);

// SAFETY: plain memory that no handle refers to while it is spare.
unsafe impl Send for Mapping {}

impl Mapping {
    fn unmap(self) {
        // SAFETY: a chunk's own mapping, of CHUNK bytes; nothing refers to it any more.
        unsafe { libc::munmap(self.0.as_ptr().cast(), CHUNK) };
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        if let Ok(chunks) = self.chunks.get_mut() {
            chunks.drain(..).for_each(Mapping::unmap);
        }
    }
}

impl Backlog {
    /// `bytes`, copied into the current chunk (or a new one), or on their own when large.
    pub fn copy(&self, bytes: &[u8]) -> Bytes {
        if bytes.is_empty() || bytes.len() > LARGEST {
            return Bytes::copy_from_slice(bytes);
        }
        let Ok(mut current) = self.current.lock() else { return Bytes::copy_from_slice(bytes) };
        let (chunk, at) = match current.take() {
            Some((chunk, used)) if CHUNK - used >= bytes.len() => (chunk, used),
            _ => match Chunk::take(&self.spare) {
                Some(chunk) => (Arc::new(chunk), 0),
                None => return Bytes::copy_from_slice(bytes),
            },
        };
        // SAFETY: `at..at + len` lies within the chunk (checked above) and no other handle covers
        // it: handles are made only for ranges below `used`, which moves past this one now.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), chunk.ptr.as_ptr().add(at), bytes.len()) };
        *current = Some((chunk.clone(), at + bytes.len()));
        Bytes::from_owner(Piece { chunk, at, len: bytes.len() })
    }
}

/// An anonymous mapping of [`CHUNK`] bytes, aligned to a huge page; spare or unmapped on drop.
pub struct Chunk {
    ptr: NonNull<u8>,
    spare: Arc<Spare>,
}

// SAFETY: the chunk is plain memory; each range of it is written once, before any handle to it
// exists, and only read through handles after.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    /// A spare chunk, or a new mapping.
    fn take(spare: &Arc<Spare>) -> Option<Self> {
        let reused = spare.chunks.lock().ok().and_then(|mut s| s.pop());
        let ptr = match reused {
            Some(Mapping(ptr)) => ptr,
            None => Self::map()?,
        };
        spare.live.fetch_add(1, Ordering::Relaxed);
        Some(Self { ptr, spare: spare.clone() })
    }

    fn map() -> Option<NonNull<u8>> {
        let span = CHUNK + HUGE_PAGE;
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                span,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let start = (base as usize).next_multiple_of(HUGE_PAGE);
        let head = start - base as usize;
        // SAFETY: both ranges lie within the mapping made above and outside the chunk kept.
        unsafe {
            if head > 0 {
                libc::munmap(base, head);
            }
            let tail = span - head - CHUNK;
            if tail > 0 {
                libc::munmap((start + CHUNK) as *mut libc::c_void, tail);
            }
            // Advice only: without huge pages the chunk still works, with a fault per page.
            libc::madvise(start as *mut libc::c_void, CHUNK, libc::MADV_HUGEPAGE);
        }
        NonNull::new(start as *mut u8)
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // No handle to the chunk is left (this was the last `Arc`): spare, or unmapped.
        let live = self.spare.live.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let keep = SPARE.min(live + 1);
        let mapping = Mapping(self.ptr);
        let Ok(mut spare) = self.spare.chunks.lock() else { return mapping.unmap() };
        if spare.len() < keep {
            spare.push(mapping);
        } else {
            mapping.unmap();
        }
        if spare.len() > keep {
            spare.drain(keep..).for_each(Mapping::unmap);
        }
    }
}

/// One job's bytes in a chunk.
struct Piece {
    chunk: Arc<Chunk>,
    at: usize,
    len: usize,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: written before this piece was made, within the chunk, never written again.
        unsafe { std::slice::from_raw_parts(self.chunk.ptr.as_ptr().add(self.at), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(b: &Backlog) -> std::sync::Weak<Chunk> {
        Arc::downgrade(&b.current.lock().unwrap().as_ref().unwrap().0)
    }

    /// Jobs lie one after another in a chunk; a large one is allocated on its own; each reads back
    /// what was copied.
    #[test]
    fn jobs_lie_one_after_another_and_large_ones_apart() {
        let b = Backlog::default();
        let first = b.copy(&[1; 1000]);
        let second = b.copy(&[2; 3000]);
        assert_eq!(second.as_ptr(), first.as_ptr().wrapping_add(1000));
        assert_eq!((&first[..], &second[..]), (&[1u8; 1000][..], &[2u8; 3000][..]));
        assert_eq!(first.as_ptr() as usize % HUGE_PAGE, 0, "a chunk starts on a huge page");
        let large = b.copy(&vec![3; LARGEST + 1]);
        let chunk = first.as_ptr() as usize..first.as_ptr() as usize + CHUNK;
        assert!(!chunk.contains(&(large.as_ptr() as usize)));
        assert!(large.iter().all(|x| *x == 3));
        let third = b.copy(&[4; 10]);
        assert_eq!(third.as_ptr(), second.as_ptr().wrapping_add(3000), "the large job took no room");
        assert!(b.copy(&[]).is_empty());
    }

    /// A chunk is unmapped once the backlog has moved on to another and its last job is gone,
    /// not before.
    #[test]
    fn a_chunk_is_freed_with_its_last_job() {
        let b = Backlog::default();
        let mut jobs: Vec<Bytes> = (0..4).map(|i| b.copy(&vec![i; LARGEST])).collect();
        let full = current(&b);
        let next = b.copy(&[9; 100]);
        assert_ne!(current(&b).as_ptr(), full.as_ptr(), "a job that does not fit starts a new chunk");
        let last = jobs.pop().unwrap();
        drop(jobs);
        assert!(full.upgrade().is_some(), "one job still holds it");
        assert!(last.iter().all(|x| *x == 3));
        drop(last);
        assert!(full.upgrade().is_none(), "freed with its last job");
        assert_eq!(next[..], [9; 100]);
    }

    /// A freed chunk is kept for the next one (memory already touched), up to [`SPARE`] of them;
    /// the rest are unmapped.
    #[test]
    fn freed_chunks_are_reused_up_to_a_bound() {
        let b = Backlog::default();
        let first = b.copy(&vec![1; LARGEST]);
        let at = first.as_ptr();
        drop(first);
        for _ in 0..3 {
            b.copy(&vec![2; LARGEST]);
        }
        // The current chunk is full: the next job takes a new chunk, which is the freed one.
        *b.current.lock().unwrap() = None;
        assert_eq!(b.spare.chunks.lock().unwrap().len(), 1);
        assert_eq!(b.copy(&[3; 10]).as_ptr(), at, "the spare chunk is reused");
        assert!(b.spare.chunks.lock().unwrap().is_empty());
        // A backlog of many chunks drains: spare chunks never outnumber those in use by more
        // than one, nor SPARE; at the end one is left.
        *b.current.lock().unwrap() = None;
        let mut jobs: std::collections::VecDeque<Bytes> = (0..4 * 20).map(|_| b.copy(&vec![4; LARGEST])).collect();
        *b.current.lock().unwrap() = None;
        let mut most = 0;
        while jobs.pop_front().is_some() {
            let (spare, live) = (b.spare.chunks.lock().unwrap().len(), b.spare.live.load(Ordering::Relaxed));
            assert!(spare <= SPARE.min(live + 1), "{spare} spare with {live} in use");
            most = most.max(spare);
        }
        assert_eq!(most, SPARE);
        assert_eq!(b.spare.chunks.lock().unwrap().len(), 1);
    }

    /// Connections copy concurrently: each gets its own bytes back.
    #[test]
    fn concurrent_copies_keep_their_own_bytes() {
        let b = Arc::new(Backlog::default());
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let jobs: Vec<Bytes> = (0..2000).map(|i| b.copy(&vec![t; 100 + i % 900])).collect();
                    jobs.iter().all(|j| j.iter().all(|x| *x == t))
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
    }
}
