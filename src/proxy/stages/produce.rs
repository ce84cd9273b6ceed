//! Produce validation: each Produce request is walked once ([`crate::proxy::produce::inspect`]),
//! its records checked against the AsyncAPI documents in force, and by policy annotated or refused.
//! Refused partitions are left out of the forwarded request and their errors merged into the
//! broker's answer (the [`Merge`] hook), so the producer gets one answer, in order; a request with
//! nothing left is answered locally; an `acks=0` request with refusals is forwarded without them
//! and the connection closed, as a broker would. The partitions that go to the broker are left in
//! the request's notes ([`ToMirror`]) for the mirror tap, and records refused by policy go to the
//! mirror's rejected subjects at once (they never reach Kafka, so no answer will tell of them).

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;

use crate::proxy::chain::{AnswerCtx, AnswerHook, Ctx, Flow, Request, Stage, StageError};
use crate::proxy::produce::{self, Merge, Mirrored};
use crate::wire::rewrite::recode_produce_response;

/// Produce requests larger than this are inspected with [`tokio::task::block_in_place`], so that
/// checking thousands of records never holds up the other connections of the same worker thread.
const INLINE_INSPECTION_BYTES: usize = 256 * 1024;

pub struct Validate;

/// The partitions of a request that go to the broker, for the mirror tap.
pub struct ToMirror(pub Vec<Mirrored>);

impl Stage for Validate {
    fn name(&self) -> &'static str {
        "produce"
    }

    fn wants(&self, api_key: i16, _: i16) -> bool {
        api_key == ApiKey::Produce as i16
    }

    fn on_request(&self, cx: &Ctx<'_>, req: &mut Request) -> Result<Flow, StageError> {
        let gw = cx.gw;
        let mirror_on = gw.mirror.as_ref().is_some_and(|m| m.active());
        let inspect = || produce::inspect(&gw.validation, &gw.validation_metrics, &req.meta, &req.frame, mirror_on);
        let multi_thread = || {
            tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
        };
        let inspection = if req.frame.len() > INLINE_INSPECTION_BYTES && multi_thread() {
            tokio::task::block_in_place(inspect)?
        } else {
            inspect()?
        };
        if let Some(m) = &gw.mirror {
            for job in inspection.refused {
                m.submit(job);
            }
        }
        Ok(match inspection.plan {
            produce::Plan::Forward { frame, merge, mirror } => {
                if let Some(frame) = frame {
                    req.frame = frame;
                }
                if let Some(merge) = merge {
                    req.on_answer(MergeRefusals(merge));
                }
                if let Some(parts) = mirror {
                    req.notes.insert(ToMirror(*parts));
                }
                Flow::Next
            }
            produce::Plan::Answer(answer) => Flow::Answer(answer),
            produce::Plan::ForwardThenClose { frame, reason } => {
                let forward = frame.is_some();
                if let Some(frame) = frame {
                    req.frame = frame;
                }
                Flow::Close { forward, reason: format!("refused an acks=0 produce request: {reason}") }
            }
        })
    }
}

/// Puts eventgate's refusals into the broker's answer, in request order.
struct MergeRefusals(Box<Merge>);

impl AnswerHook for MergeRefusals {
    fn stage(&self) -> &'static str {
        "produce"
    }

    fn on_answer(self: Box<Self>, cx: &AnswerCtx<'_>, answer: Bytes) -> Result<Option<Bytes>, StageError> {
        let version = cx.api_version;
        let merge = self.0;
        let merged = recode_produce_response(version, &answer, |resp| produce::merge_into(resp, &merge, version))?;
        cx.gw.metrics.responses_rewritten.increment(1);
        Ok(Some(merged))
    }
}
