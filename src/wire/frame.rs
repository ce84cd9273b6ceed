//! Frame boundaries: every Kafka request and response is an `INT32` size followed by that many bytes.
//!
//! [`FrameBuffer`] owns a connection's read buffer. It reads from the socket in large chunks and
//! hands out whole frames as [`Bytes`] that share the buffer's allocation, so forwarding a frame
//! costs no copy; when every handed-out frame has been written and dropped, the allocation is reused.
//! Memory is committed only as bytes actually arrive: a peer that announces a 100 MiB frame and sends
//! ten bytes makes eventgate hold ten bytes (in room for no more than it has already sent in one
//! frame), not 100 MiB.
//!
//! A frame still held elsewhere (a stage waiting for its answer: the mirror tap holds Produce
//! requests until the broker's answer, and the mirror's queue may hold them until published) keeps the allocation from being reused, and the next frame
//! is read into a new one. Grown step by step, that one would be copied at every step (about once
//! its size in all, and fresh pages for the kernel to zero). So a frame in progress gets room for
//! the rest of it, once the peer has already sent a whole frame of at least that size on the
//! connection (else twice what it has sent of this one; a broker's answers, read with
//! [`FrameBuffer::for_answers`], grow by doubling, so up to four times); a read that starts between frames, once
//! the allocation is nearly full, gets room for the largest frame sent so far (up to 256 KiB); and
//! a buffer found between frames with far more room than that is replaced. What the peer has sent
//! bounds what it can make eventgate hold, and small frames share their allocation.
//!
//! Each frame comes with its *room*: the size of the allocation it was read into, which any slice
//! of it keeps alive ([`FrameBuffer::next_frame_in_room`]). A holder that keeps part of a frame
//! beyond its answer (the mirror's queue) uses it to tell a slice that pins about its own size from
//! one that would pin a much larger allocation.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::WireError;

/// The default maximum frame size, as Kafka's `socket.request.max.bytes`.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 100 * 1024 * 1024;

/// The smallest read eventgate asks the kernel for.
const MIN_READ: usize = 64 * 1024;
/// The most room made for a read that starts between frames, before the next size is known; a
/// buffer found with more than twice this room then is replaced, so an idle connection gives a
/// large buffer back and small frames rarely share one. Making room still takes back the whole
/// allocation of a buffer nobody else holds, so that large frames one after another (Fetch
/// answers of megabytes) are read into one allocation: a frame read then may sit in room that
/// large frames of the same peer filled before it, at most about twice the largest. (A frame held
/// elsewhere keeps its whole allocation alive, other frames' room included: holders that keep
/// frames beyond their answer, as the mirror's queue does, go by the room each frame is reported
/// in, and copy what would pin far more than itself.)
const BETWEEN_FRAMES: usize = 256 * 1024;

/// Returns the total length (size prefix included) of the frame at the start of `buf` once all of
/// it is there, `None` while it is still incomplete.
pub fn check(buf: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let size = i32::from_be_bytes(*prefix);
    if size < 0 {
        return Err(WireError::NegativeFrameSize(size));
    }
    let size = size as usize;
    if size > max {
        return Err(WireError::FrameTooLarge { size, max });
    }
    Ok((buf.len() >= 4 + size).then_some(4 + size))
}

/// A read buffer that yields whole frames.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: BytesMut,
    max: usize,
    /// The largest whole frame the peer has sent on this connection.
    largest: usize,
    /// The address and size of the allocation `buf` is in, as last seen (see [`Self::track`]).
    alloc: (usize, usize),
    /// Whether a frame in progress may get room ahead of what has arrived, doubling (answers from
    /// the broker eventgate fronts; see [`Self::for_answers`]).
    ahead: bool,
}

impl FrameBuffer {
    pub fn new(max_frame_bytes: usize) -> Self {
        let buf = BytesMut::with_capacity(MIN_READ);
        let mut fb = Self { buf, max: max_frame_bytes, largest: 0, alloc: (0, 0), ahead: false };
        fb.track();
        fb
    }

    /// A buffer for the broker's answers: a buffer at the start of its allocation grows as `Vec`
    /// does, doubling, so answers each larger than any before (a consumer's fetches growing) are
    /// not copied at every one; a frame in progress may then sit in room of up to four times
    /// what has arrived (room untouched until bytes arrive). Peers on the client side get
    /// [`Self::new`]: room for what they sent, at most twice.
    pub fn for_answers(max_frame_bytes: usize) -> Self {
        Self { ahead: true, ..Self::new(max_frame_bytes) }
    }

    /// Takes the next whole frame (size prefix included) out of the buffer, if one is there.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        Ok(self.next_frame_in_room()?.map(|(frame, _)| frame))
    }

    /// [`Self::next_frame`], with the frame's room: the bytes of the allocation it lies in, which
    /// holding any slice of it keeps alive (the frames around it included).
    pub fn next_frame_in_room(&mut self) -> Result<Option<(Bytes, usize)>, WireError> {
        let Some(len) = check(&self.buf, self.max)? else { return Ok(None) };
        self.largest = self.largest.max(len);
        self.track();
        Ok(Some((self.buf.split_to(len).freeze(), self.alloc.1)))
    }

    /// Room for `additional` more bytes, the buffered bytes first in whatever allocation they end
    /// up in: in the allocation the buffer is in when that can be done without allocating (there
    /// is room, or nobody else holds it and its bytes move to its start: large frames one after
    /// another reuse one allocation); else in an allocation of just that. A buffer at the start of
    /// its allocation that must at least double gets it from `reserve` (`Vec`'s own growth, which
    /// is then exactly that), and so does any buffer at the start of its allocation that reads
    /// answers ([`Self::for_answers`]: `Vec` doubles, several times faster for answers larger than
    /// any before, BENCHMARKS.md); any other gets a fresh buffer, the buffered bytes copied to its
    /// start (`reserve` on a buffer nobody else holds, after bytes it no longer uses, would keep
    /// those: the frames in it would lie in more room than they seem to; and doubling would let
    /// a client's frame read in small pieces sit in four times what it sent).
    fn make_room(&mut self, additional: usize) {
        if self.buf.try_reclaim(additional) {
            return;
        }
        let needed = self.buf.len().saturating_add(additional);
        if self.buf.as_ptr() as usize == self.alloc.0 && (self.ahead || needed >= 2 * self.buf.capacity()) {
            self.buf.reserve(additional);
        } else {
            self.fresh(needed);
        }
    }

    /// Replaces the buffer with a new allocation of `capacity`, the buffered bytes at its start.
    fn fresh(&mut self, capacity: usize) {
        let mut fresh = BytesMut::with_capacity(capacity.max(self.buf.len()));
        fresh.extend_from_slice(&self.buf);
        self.buf = fresh;
    }

    /// Notes the allocation `buf` is in. A buffer that reaches past the one last seen has moved to
    /// a new allocation, which it starts at: every allocation a frame buffer gets is made with
    /// its bytes first ([`Self::make_room`], a fresh buffer), and this runs after each and before
    /// frames are split off, so the size noted is all of it. Taking the whole allocation back
    /// stays inside the one noted. A buffer inside a noted allocation it is no longer in (that
    /// one freed, a smaller one made in its place, with no call between) keeps the larger size:
    /// too much, never too little.
    fn track(&mut self) {
        let (at, cap) = (self.buf.as_ptr() as usize, self.buf.capacity());
        let (start, len) = self.alloc;
        if at < start || at.saturating_add(cap) > start.saturating_add(len) {
            self.alloc = (at, cap);
        }
    }

    /// Bytes buffered that do not yet make a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Reads once from `src`. Returns the number of bytes read; 0 means end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, src: &mut R) -> std::io::Result<usize> {
        let room = self.buf.capacity() - self.buf.len();
        match self.buf.first_chunk::<4>() {
            // A frame in progress: room for the rest of it (at least a byte: a whole frame is
            // taken before the next read), and only that, so a buffer that has room for all of it
            // is never grown and copied. Never more than twice what the peer has already sent of
            // it, or the largest whole frame it has already sent: the announced size is a claim,
            // not a promise.
            Some(prefix) => {
                let total = 4 + (i32::from_be_bytes(*prefix).max(0) as usize).min(self.max);
                let missing = total.saturating_sub(self.buf.len()).max(1);
                let bound = self.buf.len().max(MIN_READ).max(self.largest.saturating_sub(self.buf.len()));
                self.make_room(missing.min(bound));
            }
            // Between frames, once the room left is under MIN_READ: room for the largest frame
            // the peer has sent (up to [`BETWEEN_FRAMES`]), so that a frame like it is not read
            // into a small buffer that then grows, and is copied, step by step. While there is
            // room, frames go on filling the allocation they share: held small frames never pin
            // one large allocation each.
            None if room < MIN_READ => self.make_room(self.largest.clamp(MIN_READ, BETWEEN_FRAMES)),
            // Far more room than a read between frames gets (left by a large frame, or by a
            // buffer grown for one): a fresh allocation instead, so small frames read next never
            // pin the large one while they are held, and an idle connection gives it back.
            None if room > 2 * BETWEEN_FRAMES => self.fresh(self.largest.clamp(MIN_READ, BETWEEN_FRAMES)),
            None => {}
        }
        // The branches above leave room; if one ever did not, the read would grow the buffer
        // itself, where `track` could not see how.
        if self.buf.capacity() == self.buf.len() {
            self.make_room(1);
        }
        self.track();
        src.read_buf(&mut self.buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn frames_cut_at_every_byte_boundary_are_reassembled() {
        let mut wire = frame(b"first frame");
        wire.extend(frame(b""));
        wire.extend(frame(&[7u8; 300]));
        for cut in 0..=wire.len() {
            let mut fb = FrameBuffer::new(1024);
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                fb.buf.extend_from_slice(part);
                while let Some(f) = fb.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 3, "cut at {cut}");
            assert_eq!(&got[0][4..], b"first frame");
            assert_eq!(got[1].len(), 4);
            assert_eq!(got[2].len(), 304);
            assert_eq!(fb.buffered(), 0);
        }
    }

    #[test]
    fn oversized_and_negative_frames_are_errors() {
        assert!(matches!(check(&frame(&[0; 11]), 10), Err(WireError::FrameTooLarge { size: 11, max: 10 })));
        assert!(matches!(check(&(-5i32).to_be_bytes(), 10), Err(WireError::NegativeFrameSize(-5))));
        assert_eq!(check(&[0, 0], 10).unwrap(), None);
    }

    /// A new buffer, and the first frame of `wire` read through it (as reads of `wire` come).
    async fn first_frame(wire: &[u8]) -> (FrameBuffer, Bytes) {
        let mut fb = FrameBuffer::new(DEFAULT_MAX_FRAME_BYTES);
        let mut src = wire;
        loop {
            fb.fill(&mut src).await.unwrap();
            if let Some(f) = fb.next_frame().unwrap() {
                return (fb, f);
            }
        }
    }

    #[tokio::test]
    async fn a_frame_no_larger_than_one_already_sent_is_read_into_one_allocation() {
        let big = frame(&[7u8; 700_000]);
        let (mut fb, first) = first_frame(&big).await;
        // `first` is still held, as a stage waiting for the broker's answer holds it. The next
        // frame's size prefix alone gets room for the whole of it, not MIN_READ at a time.
        let mut src: &[u8] = &big[..4];
        fb.fill(&mut src).await.unwrap();
        fb.fill(&mut &[][..]).await.unwrap();
        assert!(fb.buf.capacity() >= big.len(), "capacity {}", fb.buf.capacity());
        // A larger frame than any sent so far is still read step by step.
        let mut fb = FrameBuffer::new(DEFAULT_MAX_FRAME_BYTES);
        let mut src: &[u8] = &(5_000_000i32).to_be_bytes();
        fb.fill(&mut src).await.unwrap();
        fb.fill(&mut &[][..]).await.unwrap();
        assert!(fb.buf.capacity() < 1024 * 1024, "capacity {}", fb.buf.capacity());
        drop(first);
    }

    #[tokio::test]
    async fn a_frame_like_a_held_one_is_read_in_place_from_its_first_bytes() {
        let big = frame(&vec![7u8; 200_000]);
        let (mut fb, first) = first_frame(&big).await;
        let mut held = vec![first];
        // The first frame is held (the mirror tap holds a request until its answer). The next one
        // arrives in pieces, the first too short to hold its size: where its first bytes land is
        // where it stays, never grown and copied.
        for _ in 0..3 {
            let mut src: &[u8] = &big[..3];
            fb.fill(&mut src).await.unwrap();
            let at = fb.buf.as_ptr();
            for piece in big[3..].chunks(50_000) {
                fb.fill(&mut &piece[..]).await.unwrap();
            }
            let next = fb.next_frame().unwrap().unwrap();
            assert_eq!(next.as_ptr(), at, "the frame was moved after its first bytes were read");
            held.push(next);
        }
    }

    /// Reads a small frame and returns the room of the allocation it sits in (from the frame on),
    /// checked against the room the buffer reports with it, which is never less.
    async fn room_of_a_small_frame(fb: &mut FrameBuffer) -> usize {
        fb.fill(&mut &frame(&[1u8; 96])[..]).await.unwrap();
        let (next, reported) = fb.next_frame_in_room().unwrap().unwrap();
        let room = fb.buf.capacity() + next.len();
        assert!(reported >= room, "reported {reported}, the frame sits in {room}");
        room
    }

    #[tokio::test]
    async fn room_made_between_frames_is_bounded() {
        let big = frame(&vec![7u8; 5_000_000]);
        // One large frame, still held: the small frame read next lies in room of at most
        // BETWEEN_FRAMES, not in what the large one left, so holding it pins no more than that.
        // Let go, its allocation is taken back whole for the small frame (which says so: it is
        // reported in that room), and then given back, the next read finding far more room than a
        // read between frames gets.
        for hold in [true, false] {
            let (mut fb, first) = first_frame(&big).await;
            let first = hold.then_some(first);
            let room = room_of_a_small_frame(&mut fb).await;
            let bound = if hold { 2 * BETWEEN_FRAMES } else { big.len() };
            assert!(room <= bound, "held {hold}: the small frame sits in {room} bytes of room");
            let room = room_of_a_small_frame(&mut fb).await;
            assert!(room <= 2 * BETWEEN_FRAMES, "held {hold}: the next small frame sits in {room} bytes of room");
            drop(first);
        }
    }

    /// Making room takes back the whole allocation of a buffer nobody else holds (so large frames
    /// one after another, each let go once written, need no new allocation each). A small frame
    /// read after them may then sit in room the peer's own large frames filled: bounded by what
    /// the peer sent, about twice its largest frame, never by a size it merely announced.
    #[tokio::test]
    async fn after_large_frames_a_small_one_sits_in_room_they_filled_at_most() {
        let big = frame(&vec![7u8; 2_000_000]);
        let (mut fb, first) = first_frame(&big).await;
        drop(first);
        let mut at = Vec::new();
        for _ in 0..3 {
            let mut src = &big[..];
            let next = loop {
                fb.fill(&mut src).await.unwrap();
                if let Some(f) = fb.next_frame().unwrap() {
                    break f;
                }
            };
            assert_eq!(next.len(), big.len());
            at.push(next.as_ptr() as usize);
        }
        assert!(at.windows(2).all(|w| w[0] == w[1]), "large frames let go are read into one allocation: {at:?}");
        let room = room_of_a_small_frame(&mut fb).await;
        assert!(room >= big.len(), "the small frame is read into the room taken back ({room} bytes)");
        assert!(room <= 2 * big.len() + 2 * BETWEEN_FRAMES, "the small frame sits in {room} bytes");
    }

    #[tokio::test]
    async fn small_frames_held_after_a_large_one_share_their_allocation() {
        let (mut fb, first) = first_frame(&frame(&vec![7u8; 900_000])).await;
        let mut held = vec![first];
        // A thousand small frames, each read on its own and all held (as requests waiting for
        // their answers are): they fill shared allocations, not one of their own each.
        let small = frame(&[1u8; 96]);
        for _ in 0..1000 {
            fb.fill(&mut &small[..]).await.unwrap();
            held.extend(fb.next_frame().unwrap());
        }
        let adjacent = held.windows(2).filter(|w| w[1].as_ptr() == w[0].as_ptr().wrapping_add(w[0].len())).count();
        assert!(adjacent >= 990, "{adjacent} of 1000 small frames follow the one before");
    }

    /// A frame announced large and sent in small pieces never sits in more than twice what has
    /// arrived (and the smallest read): a client's buffer grows as bytes come, never by doubling
    /// ahead. A broker's answers grow by doubling (room for the next, larger answer): at most four
    /// times.
    #[tokio::test]
    async fn a_frame_sent_slowly_sits_in_at_most_twice_what_arrived() {
        for (mut fb, times) in
            [(FrameBuffer::new(DEFAULT_MAX_FRAME_BYTES), 2), (FrameBuffer::for_answers(DEFAULT_MAX_FRAME_BYTES), 4)]
        {
            let mut src: &[u8] = &(100_000_000i32).to_be_bytes();
            fb.fill(&mut src).await.unwrap();
            for piece in [65_536usize, 1, 1, 100, 1, 70_000, 1, 1, 200_000, 1, 700_000, 1] {
                fb.fill(&mut &vec![0u8; piece][..]).await.unwrap();
                let (held, room) = (fb.buf.len(), fb.buf.capacity());
                assert!(room <= times * held + MIN_READ, "{held} bytes arrived, in {room} bytes of room ({times}×)");
            }
        }
    }

    #[tokio::test]
    async fn announced_size_does_not_reserve_memory_up_front() {
        let mut fb = FrameBuffer::new(DEFAULT_MAX_FRAME_BYTES);
        let mut src: &[u8] = &[0x05, 0x00, 0x00, 0x00, 1, 2, 3];
        fb.fill(&mut src).await.unwrap();
        fb.fill(&mut src).await.unwrap();
        assert!(fb.buf.capacity() < 1024 * 1024, "capacity {}", fb.buf.capacity());
    }
}
