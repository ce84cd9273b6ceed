//! `acks=0` Produce requests. The producer expects no answer, so normally none is waited for. When
//! the mirror needs the offsets of the records (the produce stage left [`ToMirror`] notes), the
//! request goes to the broker with `acks=1` instead, and the broker's answer is kept from the
//! producer: if the broker refused a partition, the connection is closed, which is how a broker
//! tells an `acks=0` producer that a request failed.

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use super::produce::ToMirror;
use crate::proxy::chain::{AnswerCtx, AnswerHook, Ctx, Flow, Request, Stage, StageError};
use crate::wire::header::response_header_len;
use crate::wire::reader::Reader;
use crate::wire::scan;

pub struct AcksZero;

impl Stage for AcksZero {
    fn name(&self) -> &'static str {
        "acks_zero"
    }

    fn wants(&self, api_key: i16, _: i16) -> bool {
        api_key == ApiKey::Produce as i16
    }

    fn on_request(&self, _: &Ctx<'_>, req: &mut Request) -> Result<Flow, StageError> {
        let body_at = req.meta.body_offset(&req.frame)?;
        let (acks, at) = acks_at(&req.frame, body_at, req.meta.api_version)?;
        if acks != 0 {
            return Ok(Flow::Next);
        }
        if req.notes.get::<ToMirror>().is_some() {
            let mut frame = BytesMut::from(&req.frame[..]);
            frame[at..at + 2].copy_from_slice(&1i16.to_be_bytes());
            req.frame = frame.freeze();
            req.on_answer(Swallow);
        } else {
            req.expect_no_answer();
        }
        Ok(Flow::Next)
    }
}

/// The request's `acks` and where it sits in the frame.
fn acks_at(frame: &[u8], body_at: usize, version: i16) -> Result<(i16, usize), crate::wire::WireError> {
    let mut r = Reader::new(frame.get(body_at..).unwrap_or_default());
    if version >= 3 {
        r.nullable_string(version >= 9, "transactional id")?;
    }
    let at = body_at + r.position();
    Ok((r.i16("acks")?, at))
}

/// Keeps the broker's answer from an `acks=0` producer; closes on a refusal.
struct Swallow;

impl AnswerHook for Swallow {
    fn stage(&self) -> &'static str {
        "acks_zero"
    }

    fn on_answer(self: Box<Self>, cx: &AnswerCtx<'_>, answer: Bytes) -> Result<Option<Bytes>, StageError> {
        let hlen = response_header_len(ApiKey::Produce, cx.api_version, answer.get(4..).unwrap_or_default())?;
        let mut refused = 0usize;
        scan::produce_response(&answer[4 + hlen..], cx.api_version, |p| refused += usize::from(p.error_code != 0))?;
        if refused > 0 {
            return Err(StageError::Close(format!(
                "refused an acks=0 produce request, so closing the connection as a broker would: the broker \
                 refused {refused} partition(s)"
            )));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::proxy::stages::testing::{answer_through, request_through_with, response_frame};

    fn request(acks: i16) -> Bytes {
        let req = ProduceRequest::default().with_acks(acks).with_timeout_ms(1000);
        crate::proxy::stages::testing::request(ApiKey::Produce, 9, 3, &req)
    }

    fn answer(error_code: i16) -> Bytes {
        let mut resp = ProduceResponse::default();
        resp.responses.push(
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![PartitionProduceResponse::default().with_error_code(error_code)]),
        );
        response_frame(ApiKey::Produce, 9, 3, &resp)
    }

    #[tokio::test]
    async fn without_the_mirror_no_answer_is_waited_for() {
        let (flow, req) = request_through_with(&AcksZero, request(0), |_| {});
        assert!(matches!(flow, Flow::Next));
        assert!(!req.answered());
        assert_eq!(req.frame, request(0), "forwarded as it came");
        let (_, req) = request_through_with(&AcksZero, request(-1), |_| {});
        assert!(req.answered());
    }

    #[tokio::test]
    async fn for_the_mirror_the_broker_answers_and_the_producer_hears_nothing() {
        let (flow, req) = request_through_with(&AcksZero, request(0), |r| r.notes.insert(ToMirror(Vec::new())));
        assert!(matches!(flow, Flow::Next));
        assert!(req.answered());
        let sent = crate::proxy::stages::testing::decode_request::<ProduceRequest>(&req.frame);
        assert_eq!(sent.acks, 1);
        assert_eq!(answer_through(req, answer(0)).unwrap(), None);
    }

    #[tokio::test]
    async fn a_refusal_closes_the_connection_as_a_broker_would() {
        let (_, req) = request_through_with(&AcksZero, request(0), |r| r.notes.insert(ToMirror(Vec::new())));
        let err = answer_through(req, answer(6)).unwrap_err();
        assert_eq!(err.stage, "acks_zero");
        assert!(err.to_string().contains("refused 1 partition(s)"), "{err}");
    }
}
