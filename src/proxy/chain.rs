//! The chain of stages: where each Kafka behaviour eventgate adds plugs in.
//!
//! Every request frame of a connection goes through the chain in order, and its answer comes back
//! through the hooks the stages left on it, in reverse order (an onion):
//!
//! ```text
//!            ┌───────────── request ──────────────────────────────────────────────────────────┐
//!  client ──▶│ api_versions ─▶ identity ─▶ addresses ─▶ produce ─▶ acks_zero ─▶ mirror_tap │──▶ broker
//!  client ◀──│ api_versions ◀─ identity ◀─ addresses ◀─ produce ◀─ acks_zero ◀─ mirror_tap │◀── broker
//!            └───────────── answer (only the hooks a request registered) ────────────────────┘
//! ```
//!
//! The contract of a stage ([`Stage`]):
//!
//! - It says which requests it wants by API key and version ([`Stage::wants`]), read from the
//!   header before anything is decoded. A frame no stage wants goes to the broker as the bytes that
//!   arrived, and its answer comes back as the bytes the broker sent: the chain costs such a frame
//!   one header peek and one call per stage.
//! - It sees a request it wants ([`Stage::on_request`]) and may replace the frame, leave notes for
//!   later stages of the same request ([`Request::notes`], typed), register a hook for the answer
//!   ([`Request::on_answer`]), say the broker will not answer ([`Request::expect_no_answer`]), and
//!   then go on ([`Flow::Next`]), answer locally instead of the broker ([`Flow::Answer`]), or forward
//!   (or not) and close once every earlier answer is out ([`Flow::Close`]). A local answer or a
//!   close ends the chain for that request: later stages do not see it.
//! - A hook ([`AnswerHook`]) gets the broker's answer frame and returns it (changed or not), or
//!   `None` to send the client nothing (an `acks=0` request sent with `acks=1`). Hooks run on the
//!   connection's answer side, after the correlation id was checked, in the reverse order of
//!   registration; a hook that returns `None` ends the answer's way.
//! - A stage is shared by every connection (`Send + Sync`, no `&mut self`): state of one request
//!   travels in the request's notes and hooks, state of a connection in [`Session`] (`producer`,
//!   and [`Session::with_state`] for a stage's own).
//! - A stage never panics on peer input and never blocks for long (a large Produce request is
//!   inspected in `block_in_place` by the stage that walks it). Its errors name it ([`StageError`]),
//!   and close only this connection.
//!
//! Adding a behaviour is one file under `stages/` with a type implementing [`Stage`], and one line
//! in [`super::stages::standard`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use super::Gateway;
use crate::wire::WireError;
use crate::wire::header::RequestMeta;
use crate::wire::rewrite::RewriteError;

/// One request on its way through the chain.
pub struct Request {
    pub meta: RequestMeta,
    /// What goes to the broker: the frame as it arrived, unless a stage replaced it.
    pub frame: Bytes,
    answered: bool,
    hooks: Vec<Box<dyn AnswerHook>>,
    /// Typed notes stages leave for later stages of this request.
    pub notes: Notes,
    /// The frame as read, and the room it was read into (see [`Request::room_of`]).
    read: Option<(Bytes, usize)>,
}

/// Notes stages leave for later stages of the same request (or, in [`Session`], for later requests
/// of the connection), one per type (like `http::Extensions`). Nothing is allocated until a stage inserts one; a request carries a few at
/// most, so they are found by a scan.
#[derive(Default, Debug)]
pub struct Notes(Vec<Box<dyn std::any::Any + Send>>);

impl Notes {
    /// Adds a note, replacing one of the same type.
    pub fn insert<T: Send + 'static>(&mut self, note: T) {
        self.remove::<T>();
        self.0.push(Box::new(note));
    }

    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.0.iter().find_map(|n| n.downcast_ref::<T>())
    }

    pub fn get_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.0.iter_mut().find_map(|n| n.downcast_mut::<T>())
    }

    pub fn remove<T: 'static>(&mut self) -> Option<T> {
        let at = self.0.iter().position(|n| n.is::<T>())?;
        self.0.swap_remove(at).downcast::<T>().ok().map(|b| *b)
    }
}

impl Request {
    pub fn new(meta: RequestMeta, frame: Bytes) -> Self {
        Self { meta, frame, answered: true, hooks: Vec::new(), notes: Notes::default(), read: None }
    }

    /// A request as read from the client, its frame in an allocation of `room` bytes
    /// ([`crate::wire::frame::FrameBuffer::next_frame_in_room`]).
    pub fn read(meta: RequestMeta, frame: Bytes, room: usize) -> Self {
        Self { read: Some((frame.clone(), room)), ..Self::new(meta, frame) }
    }

    /// The bytes of the allocation `part` lies in, when that is the frame as read (whatever a
    /// stage has put in [`Request::frame`] since): what holding `part` keeps alive. `None` for
    /// bytes from anywhere else.
    pub fn room_of(&self, part: &[u8]) -> Option<usize> {
        let (frame, room) = self.read.as_ref()?;
        let (start, end) = (frame.as_ptr() as usize, frame.as_ptr() as usize + frame.len());
        let at = part.as_ptr() as usize;
        (at >= start && at + part.len() <= end).then_some(*room)
    }

    /// Registers a hook for this request's answer.
    pub fn on_answer(&mut self, hook: impl AnswerHook + 'static) {
        self.hooks.push(Box::new(hook));
    }

    /// The broker will not answer this request (`acks=0` Produce), so no answer is waited for.
    pub fn expect_no_answer(&mut self) {
        self.answered = false;
    }

    /// Whether the broker will answer.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// The hooks registered so far, for the answer.
    pub fn into_hooks(self) -> Vec<Box<dyn AnswerHook>> {
        self.hooks
    }
}

/// What a stage decided about a request.
#[derive(Debug)]
pub enum Flow {
    /// On to the next stage, and in the end to the broker.
    Next,
    /// The broker does not see the request; the client gets this frame in its place.
    Answer(Bytes),
    /// Send the request's frame on (when `forward`), then close the connection once every earlier
    /// answer is out, for `reason` (how a broker tells an `acks=0` producer that a request failed).
    Close { forward: bool, reason: String },
}

/// What a stage may use: the gateway's shared state and this connection's session.
pub struct Ctx<'a> {
    pub gw: &'a Arc<Gateway>,
    pub session: &'a Session,
}

/// What is known of one client connection. Both halves of the connection see it: the request
/// side (stages) and the answer side (hooks).
#[derive(Debug)]
pub struct Session {
    pub peer: SocketAddr,
    /// Who produces on this connection, as the `identity` stage learns it.
    pub producer: std::sync::Mutex<Producer>,
    /// Stages' own per-connection state, one value per type; gone with the connection.
    state: std::sync::Mutex<Notes>,
}

impl Session {
    pub fn new(peer: SocketAddr) -> Self {
        Self { peer, producer: std::sync::Mutex::default(), state: std::sync::Mutex::default() }
    }

    /// Runs `f` on this connection's value of type `T` (created with `T::default()` on first use).
    pub fn with_state<T: Default + Send + 'static, R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut notes = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if notes.get::<T>().is_none() {
            notes.insert(T::default());
        }
        match notes.get_mut::<T>() {
            Some(value) => f(value),
            None => f(&mut T::default()),
        }
    }

    /// Who produces on this connection now (a copy: two reference counts).
    pub fn producer(&self) -> Producer {
        self.producer.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes what is known of the producer.
    pub fn update_producer(&self, f: impl FnOnce(&mut Producer)) {
        f(&mut self.producer.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

pub use crate::mirror::Producer;

/// What an answer hook may use.
pub struct AnswerCtx<'a> {
    pub gw: &'a Arc<Gateway>,
    pub session: &'a Session,
    pub api_key: i16,
    pub api_version: i16,
}

impl AnswerCtx<'_> {
    /// What goes on after a hook that may have rewritten `answer`: the new frame (counted in
    /// `eventgate_kafka_responses_rewritten_total`), or the original when nothing changed.
    pub fn rewritten(&self, answer: Bytes, new: Option<Bytes>) -> Option<Bytes> {
        match new {
            Some(new) => {
                self.gw.metrics.responses_rewritten.increment(1);
                Some(new)
            }
            None => Some(answer),
        }
    }
}

/// A behaviour of one stage: sees the requests it wants.
pub trait Stage: Send + Sync {
    /// Names the stage in errors and logs.
    fn name(&self) -> &'static str;
    /// Whether the stage wants requests of `api_key` at `api_version` (read from the header).
    fn wants(&self, api_key: i16, api_version: i16) -> bool;
    /// Sees a request it wants; see the module doc for what it may do.
    fn on_request(&self, cx: &Ctx<'_>, req: &mut Request) -> Result<Flow, StageError>;
}

/// The part of a behaviour that sees the answer to one request.
pub trait AnswerHook: Send {
    /// The stage that registered the hook (for errors).
    fn stage(&self) -> &'static str;
    /// Gets the answer frame (size prefix included) and returns what goes on to the client, or
    /// `None` for nothing.
    fn on_answer(self: Box<Self>, cx: &AnswerCtx<'_>, answer: Bytes) -> Result<Option<Bytes>, StageError>;
}

/// Why a stage closed the connection.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
    /// Close the connection, as a broker would, for this reason.
    #[error("{0}")]
    Close(String),
}

/// The stages, in request order.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
}

/// What becomes of one request frame.
pub struct Plan {
    /// The bytes to send to the broker.
    pub forward: Option<Bytes>,
    /// The answer owed to the client, if any.
    pub pending: Option<Pending>,
    /// Stop reading requests: the connection closes after this one.
    pub close: bool,
}

/// An answer the client is owed, in request order.
pub enum Pending {
    /// The broker's next frame answers this request; the hooks see it, last registered first.
    Upstream { correlation_id: i32, api_key: i16, api_version: i16, hooks: Vec<Box<dyn AnswerHook>> },
    /// eventgate answers this request itself with these bytes.
    Local(Bytes),
    /// Close the connection once every earlier answer is out.
    Close { stage: &'static str, reason: String },
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Upstream { correlation_id, api_key, api_version, hooks } => f
                .debug_struct("Upstream")
                .field("correlation_id", correlation_id)
                .field("api_key", api_key)
                .field("api_version", api_version)
                .field("hooks", &hooks.iter().map(|h| h.stage()).collect::<Vec<_>>())
                .finish(),
            Self::Local(b) => f.debug_tuple("Local").field(&b.len()).finish(),
            Self::Close { stage, reason } => {
                f.debug_struct("Close").field("stage", stage).field("reason", reason).finish()
            }
        }
    }
}

/// A stage's error, with the stage's name.
#[derive(Debug, thiserror::Error)]
#[error("stage {stage}: {source}")]
pub struct Failed {
    pub stage: &'static str,
    pub source: StageError,
}

impl Chain {
    pub fn new(stages: Vec<Box<dyn Stage>>) -> Self {
        Self { stages }
    }

    /// The stages' names, in request order.
    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }

    /// Runs a request frame through the stages that want it.
    /// `room` is the allocation the frame was read into (see [`Request::room_of`]; kept for
    /// Produce requests, the only ones whose bytes are held past their answer).
    pub fn request(&self, cx: &Ctx<'_>, meta: RequestMeta, frame: Bytes, room: usize) -> Result<Plan, Failed> {
        let mut req = if meta.api_key == kafka_protocol::messages::ApiKey::Produce as i16 {
            Request::read(meta, frame, room)
        } else {
            Request::new(meta, frame)
        };
        for stage in self.stages.iter().filter(|s| s.wants(meta.api_key, meta.api_version)) {
            let flow = stage.on_request(cx, &mut req).map_err(|source| Failed { stage: stage.name(), source })?;
            match flow {
                Flow::Next => {}
                Flow::Answer(bytes) => {
                    return Ok(Plan { forward: None, pending: Some(Pending::Local(bytes)), close: false });
                }
                Flow::Close { forward, reason } => {
                    return Ok(Plan {
                        forward: forward.then_some(req.frame),
                        pending: Some(Pending::Close { stage: stage.name(), reason }),
                        close: true,
                    });
                }
            }
        }
        let pending = req.answered.then(|| Pending::Upstream {
            correlation_id: meta.correlation_id,
            api_key: meta.api_key,
            api_version: meta.api_version,
            hooks: req.hooks,
        });
        Ok(Plan { forward: Some(req.frame), pending, close: false })
    }
}

/// Runs an answer through the hooks of its request, last registered first. `None`: the client
/// gets nothing.
pub fn answer(cx: &AnswerCtx<'_>, hooks: Vec<Box<dyn AnswerHook>>, frame: Bytes) -> Result<Option<Bytes>, Failed> {
    let mut answer = frame;
    for hook in hooks.into_iter().rev() {
        let stage = hook.stage();
        match hook.on_answer(cx, answer).map_err(|source| Failed { stage, source })? {
            Some(a) => answer = a,
            None => return Ok(None),
        }
    }
    Ok(Some(answer))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::Request;
    use crate::wire::header::RequestMeta;

    #[test]
    fn the_room_is_known_for_the_frame_as_read_only() {
        let read = Bytes::from(vec![0u8; 64]);
        let meta = RequestMeta { api_key: 0, api_version: 9, correlation_id: 1 };
        let mut req = Request::read(meta, read.clone(), 1_000);
        assert_eq!(req.room_of(&read), Some(1_000));
        assert_eq!(req.room_of(&read.slice(10..20)), Some(1_000));
        // Bytes from anywhere else: unknown.
        let other = Bytes::from(vec![0u8; 64]);
        assert_eq!(req.room_of(&other), None);
        assert_eq!(req.room_of(&read[60..]), Some(1_000));
        // A stage replaced the frame: the new one's room is unknown; slices of the frame as read
        // still lie in its room.
        req.frame = other.clone();
        assert_eq!(req.room_of(&req.frame), None);
        assert_eq!(req.room_of(&read.slice(..4)), Some(1_000));
        drop(read);
        assert_eq!(Request::new(meta, other.clone()).room_of(&other), None);
    }

    /// Notes the room a stage sees for the frame it is given.
    struct Rooms(std::sync::Arc<std::sync::Mutex<Vec<Option<usize>>>>);

    impl super::Stage for Rooms {
        fn name(&self) -> &'static str {
            "rooms"
        }

        fn wants(&self, _: i16, _: i16) -> bool {
            true
        }

        fn on_request(&self, _: &super::Ctx<'_>, req: &mut Request) -> Result<super::Flow, super::StageError> {
            let room = req.room_of(&req.frame.slice(4..));
            self.0.lock().map_err(|_| super::StageError::Close("poisoned".into()))?.push(room);
            Ok(super::Flow::Next)
        }
    }

    /// The chain hands its stages a Produce request with the room it was read into (what lets
    /// the mirror keep the records where they lie, `Mirror::submit_all`), and any other request
    /// without (nothing else is held past its answer).
    #[test]
    fn the_chain_keeps_the_room_of_produce_requests_only() {
        use kafka_protocol::messages::{ApiKey, MetadataRequest, ProduceRequest};

        use crate::proxy::stages::testing::{gateway, request};
        let seen = std::sync::Arc::default();
        let chain = super::Chain::new(vec![Box::new(Rooms(std::sync::Arc::clone(&seen)))]);
        let gw = gateway();
        let session = super::Session::new("127.0.0.1:1".parse().unwrap());
        let cx = super::Ctx { gw: &gw, session: &session };
        let produce = request(ApiKey::Produce, 9, 1, &ProduceRequest::default().with_acks(-1));
        let metadata = request(ApiKey::Metadata, 12, 2, &MetadataRequest::default());
        for frame in [produce, metadata] {
            let meta = RequestMeta::peek(&frame).unwrap();
            chain.request(&cx, meta, frame, 4_096).unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), [Some(4_096), None]);
    }
}
