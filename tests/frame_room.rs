//! The room the frame buffer reports a frame in is never less than the allocation the frame lies
//! in, checked against the allocator itself: this test binary's global allocator notes every live
//! allocation of 4 KiB or more. (The mirror's queue keeps a request's records where they were read
//! when that room is small enough, charged the room: a room reported too small would let a job
//! hold more than it is charged.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use eventgate::wire::frame::{DEFAULT_MAX_FRAME_BYTES, FrameBuffer};

/// Allocations smaller than this are not noted (frame buffers of interest are larger).
const NOTED: usize = 4096;
const SLOTS: usize = 4096;

/// The live allocations of at least [`NOTED`] bytes: start and size, 0 for a free slot.
static STARTS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static SIZES: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

struct Noting;

#[global_allocator]
static ALLOCATOR: Noting = Noting;

fn note(at: *mut u8, size: usize) {
    if at.is_null() || size < NOTED {
        return;
    }
    for (start, slot_size) in STARTS.iter().zip(&SIZES) {
        if start.compare_exchange(0, at as usize, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            slot_size.store(size, Ordering::Release);
            return;
        }
    }
}

fn forget(at: *mut u8, size: usize) {
    if size < NOTED {
        return;
    }
    for (start, slot_size) in STARTS.iter().zip(&SIZES) {
        if start.load(Ordering::Acquire) == at as usize {
            slot_size.store(0, Ordering::Release);
            start.store(0, Ordering::Release);
            return;
        }
    }
}

// SAFETY: every call is passed on to the system allocator as it came; the bookkeeping around it
// only reads and writes atomics and never allocates.
unsafe impl GlobalAlloc for Noting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let at = unsafe { System.alloc(layout) };
        note(at, layout.size());
        at
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let at = unsafe { System.alloc_zeroed(layout) };
        note(at, layout.size());
        at
    }

    unsafe fn dealloc(&self, at: *mut u8, layout: Layout) {
        forget(at, layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(at, layout) }
    }

    unsafe fn realloc(&self, at: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        forget(at, layout.size());
        // SAFETY: the caller's contract, passed on.
        let moved = unsafe { System.realloc(at, layout, new_size) };
        if moved.is_null() {
            note(at, layout.size());
        } else {
            note(moved, new_size);
        }
        moved
    }
}

/// The size of the live allocation `at` lies in, if it is one that was noted.
fn allocation_of(at: *const u8) -> Option<usize> {
    let at = at as usize;
    STARTS.iter().zip(&SIZES).find_map(|(start, size)| {
        let (start, size) = (start.load(Ordering::Acquire), size.load(Ordering::Acquire));
        (start != 0 && start <= at && at < start + size).then_some(size)
    })
}

fn frame(n: usize) -> Vec<u8> {
    let mut v = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes().to_vec();
    v.resize(4 + n, 3);
    v
}

/// Frames small and large, one after another, read in pieces of every size, held (as the mirror
/// tap holds requests) or let go at once: buffers shared and not, grown, taken back whole and
/// replaced, frames starting inside a buffer and continuing past it.
#[tokio::test]
async fn a_frame_is_never_reported_in_less_room_than_its_allocation() {
    let sizes = [100usize, 30, 5, 150_000, 20, 20, 700_000, 700_000, 5, 64 * 1024, 300_000, 10, 10, 900_000, 40];
    let wire: Vec<u8> = sizes.iter().flat_map(|&n| frame(n)).collect();
    let mut checked = 0;
    for (hold, answers) in [(true, false), (false, false), (false, true)] {
        for piece in [1000usize, 4096, 60_000, 65_536, 100_000, 250_000, usize::MAX] {
            let mut fb = if answers {
                FrameBuffer::for_answers(DEFAULT_MAX_FRAME_BYTES)
            } else {
                FrameBuffer::new(DEFAULT_MAX_FRAME_BYTES)
            };
            let mut held: Vec<Bytes> = Vec::new();
            let (mut src, mut got) = (&wire[..], 0);
            while got < sizes.len() {
                let take = piece.min(src.len());
                let mut now = &src[..take];
                fb.fill(&mut now).await.expect("reads from memory");
                src = &src[take - now.len()..];
                while let Some((f, room)) = fb.next_frame_in_room().expect("well-formed frames") {
                    assert_eq!(f.len(), 4 + sizes[got]);
                    if let Some(size) = allocation_of(f.as_ptr()) {
                        assert!(
                            room >= size,
                            "held {hold}, answers {answers}, pieces of {piece}: a frame of {} reported in \
                             {room} bytes, its allocation is {size}",
                            f.len()
                        );
                        checked += 1;
                    }
                    got += 1;
                    if hold {
                        held.push(f);
                    }
                }
            }
        }
    }
    // Most frames lie in allocations large enough to be noted.
    assert!(checked > sizes.len() * 7, "{checked} frames checked");
}
