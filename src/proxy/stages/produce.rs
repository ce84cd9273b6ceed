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
            let producer = cx.session.producer();
            for mut job in inspection.refused {
                job.producer = producer.clone();
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
        Ok(cx.rewritten(answer, Some(merged)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kafka_protocol::messages::ProduceResponse;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::proxy::Gateway;
    use crate::proxy::chain::{Session, answer};
    use crate::proxy::produce::tests::{BAD, GOOD, TOPIC, reject, request, validation};
    use crate::proxy::stages::testing::{decode_response, response_frame};
    use crate::validate::batch::codes;

    fn run(frame: Bytes) -> (Flow, Request, Arc<Gateway>) {
        let config = crate::config::Settings::default().resolve().expect("default settings resolve");
        let gw = Gateway::new(config, Arc::new(validation(reject())), None);
        let session = Session::new("127.0.0.1:1".parse().expect("address"));
        let meta = crate::wire::header::RequestMeta::peek(&frame).expect("header");
        let mut req = Request::new(meta, frame);
        let flow = Validate.on_request(&Ctx { gw: &gw, session: &session }, &mut req).expect("inspected");
        (flow, req, gw)
    }

    #[test]
    fn valid_records_pass_as_they_came_with_no_hook() {
        let (_, frame) = request(9, -1, &[(TOPIC, 0, &[GOOD])]);
        let (flow, req, _) = run(frame.clone());
        assert!(matches!(flow, Flow::Next));
        assert_eq!(req.frame, frame);
        assert!(req.into_hooks().is_empty());
    }

    #[test]
    fn a_refused_partition_is_merged_into_the_broker_s_answer() {
        let (_, frame) = request(9, -1, &[(TOPIC, 0, &[GOOD]), (TOPIC, 1, &[BAD])]);
        let (flow, req, gw) = run(frame);
        assert!(matches!(flow, Flow::Next));
        let mut resp = ProduceResponse::default();
        resp.responses.push(
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str(TOPIC)))
                .with_partition_responses(vec![PartitionProduceResponse::default().with_index(0)]),
        );
        let session = Session::new("127.0.0.1:1".parse().expect("address"));
        let cx = AnswerCtx { gw: &gw, session: &session, api_key: req.meta.api_key, api_version: 9 };
        let out = answer(&cx, req.into_hooks(), response_frame(ApiKey::Produce, 9, 9, &resp)).unwrap().unwrap();
        let merged: ProduceResponse = decode_response(ApiKey::Produce, 9, &out);
        let codes: Vec<(i32, i16)> =
            merged.responses[0].partition_responses.iter().map(|p| (p.index, p.error_code)).collect();
        assert_eq!(codes, vec![(0, 0), (1, codes::INVALID_RECORD)]);
    }

    #[test]
    fn all_refused_is_answered_locally_and_acks_zero_closes() {
        let (_, frame) = request(9, -1, &[(TOPIC, 0, &[BAD])]);
        assert!(matches!(run(frame).0, Flow::Answer(_)));
        let (_, frame) = request(9, 0, &[(TOPIC, 0, &[BAD])]);
        assert!(matches!(run(frame).0, Flow::Close { forward: false, .. }));
    }
}
