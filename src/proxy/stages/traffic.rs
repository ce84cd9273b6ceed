//! Traffic per topic: the records the broker accepted, counted from its answer into the console's
//! rates ([`crate::telemetry::rates`]). Sits inside the produce stage, so it sees the request as it
//! goes to the broker (partitions eventgate refused are gone; the produce stage counts those).
//!
//! The request is walked once on its way (topic and partition headers, and each batch's record
//! count, no more than its bytes can hold: [`plausible_records`]; no record is read) and what the answer needs is kept in a small list of its own:
//! the frame itself is let go as soon as it is written, so the connection's read buffer is reused
//! rather than copied while the broker answers. The answer's partition errors then decide what is
//! counted: a partition the broker refused is not. An `acks=0` request gets no answer: its records
//! are counted as they are forwarded. Counting never fails a request: an answer that cannot be
//! walked is passed on uncounted.

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;

use crate::proxy::chain::{AnswerCtx, AnswerHook, Ctx, Flow, Request, Stage, StageError};
use crate::telemetry::rates::Count;
use crate::wire::header::response_header_len;
use crate::wire::produce::ProduceRequestView;
use crate::wire::records::plausible_records;
use crate::wire::scan;

pub struct Traffic;

impl Stage for Traffic {
    fn name(&self) -> &'static str {
        "traffic"
    }

    fn wants(&self, api_key: i16, api_version: i16) -> bool {
        // Message sets (v0–v2) are refused or passed untouched by the produce stage; their records
        // carry no batch header to count from.
        api_key == ApiKey::Produce as i16 && api_version >= 3
    }

    fn on_request(&self, cx: &Ctx<'_>, req: &mut Request) -> Result<Flow, StageError> {
        let Ok(body_at) = req.meta.body_offset(&req.frame) else { return Ok(Flow::Next) };
        let version = req.meta.api_version;
        // The produce stage answers for malformed requests; there is nothing to count.
        let Ok(view) = ProduceRequestView::parse(&req.frame[body_at..], version) else { return Ok(Flow::Next) };
        if view.acks == 0 {
            let rates = &cx.gw.validation_metrics.topics;
            rates.add(view.topics.iter().flat_map(|t| {
                t.partitions.iter().map(|p| (t.name, Count::Records, p.records.map_or(0, plausible_records)))
            }));
        } else {
            req.on_answer(Sent::of(&view));
        }
        Ok(Flow::Next)
    }
}

/// What a request sent, kept for its answer: each partition's records (plausible count), sorted by
/// (topic, partition) so each answer entry is found by binary search, linear in the request even
/// for many partitions. Topic names live in one string: two allocations per request.
struct Sent {
    names: String,
    /// (name's range in `names`, partition, records).
    parts: Vec<(u32, u32, i32, u64)>,
    version: i16,
}

impl Sent {
    fn of(view: &ProduceRequestView<'_>) -> Self {
        let mut names = String::with_capacity(view.topics.iter().map(|t| t.name.len()).sum());
        let mut parts = Vec::with_capacity(view.topics.iter().map(|t| t.partitions.len()).sum());
        for t in &view.topics {
            let at = names.len() as u32;
            names.push_str(t.name);
            let end = names.len() as u32;
            parts.extend(t.partitions.iter().map(|p| (at, end, p.index, p.records.map_or(0, plausible_records))));
        }
        let mut sent = Self { names, parts, version: view.version };
        let mut parts = std::mem::take(&mut sent.parts);
        parts.sort_unstable_by(|a, b| (sent.name(a), a.2).cmp(&(sent.name(b), b.2)));
        sent.parts = parts;
        sent
    }

    fn name(&self, p: &(u32, u32, i32, u64)) -> &str {
        self.names.get(p.0 as usize..p.1 as usize).unwrap_or_default()
    }

    /// The records of each partition the broker accepted (error code 0), by topic; `None` when
    /// the answer cannot be walked.
    fn accepted(&self, answer: &[u8]) -> Option<Vec<(&str, u64)>> {
        let hlen = response_header_len(ApiKey::Produce, self.version, answer.get(4..)?).ok()?;
        let mut counts: Vec<(&str, u64)> = Vec::new();
        scan::produce_response(answer.get(4 + hlen..)?, self.version, |p| {
            if p.error_code != 0 {
                return;
            }
            let Ok(topic) = std::str::from_utf8(p.topic) else { return };
            let Ok(i) = self.parts.binary_search_by(|s| (self.name(s), s.2).cmp(&(topic, p.partition))) else {
                return;
            };
            let (name, n) = (self.name(&self.parts[i]), self.parts[i].3);
            match counts.last_mut() {
                Some((t, total)) if *t == name => *total += n,
                _ => counts.push((name, n)),
            }
        })
        .ok()?;
        Some(counts)
    }
}

impl AnswerHook for Sent {
    fn stage(&self) -> &'static str {
        "traffic"
    }

    fn on_answer(self: Box<Self>, cx: &AnswerCtx<'_>, answer: Bytes) -> Result<Option<Bytes>, StageError> {
        if let Some(counts) = self.accepted(&answer) {
            cx.gw.validation_metrics.topics.add(counts.iter().map(|&(t, n)| (t, Count::Records, n)));
        }
        Ok(Some(answer))
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    use kafka_protocol::messages::{ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::proxy::produce::tests::{GOOD, request};
    use crate::proxy::stages::testing::{answer_through, request_through, response_frame};

    fn answer(parts: &[(&str, i32, i16)]) -> Bytes {
        let topics = parts
            .iter()
            .map(|(t, p, code)| {
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partition_responses(vec![
                        PartitionProduceResponse::default().with_index(*p).with_error_code(*code),
                    ])
            })
            .collect();
        response_frame(ApiKey::Produce, 9, 1, &ProduceResponse::default().with_responses(topics))
    }

    fn records_of(topic: &str) -> u64 {
        let gw = crate::proxy::stages::testing::gateway();
        let s = gw.validation_metrics.topics.snapshot();
        s.topics.iter().find(|t| &*t.topic == topic).map_or(0, |t| t.records.iter().sum())
    }

    #[test]
    fn acks_zero_records_are_counted_as_they_are_forwarded() {
        let (_, req) = request_through(&Traffic, request(9, 0, &[("traffic-acks0", 0, &[GOOD, GOOD])]).1);
        assert_eq!(records_of("traffic-acks0"), 2);
        assert!(req.into_hooks().is_empty(), "no answer comes, so no hook waits for one");
    }

    #[test]
    fn the_request_frame_is_not_kept_while_the_answer_is_awaited() {
        // Holding it would keep the connection's read buffer from being reused: every following
        // frame would be read into fresh memory and copied as it grows.
        let (_, mut req) = request_through(&Traffic, request(9, -1, &[("traffic-held", 0, &[GOOD])]).1);
        let frame = std::mem::take(&mut req.frame);
        assert!(frame.is_unique(), "only the request holds its frame");
        assert_eq!(req.into_hooks().len(), 1, "the answer is still awaited");
    }

    #[test]
    fn records_the_broker_accepted_are_counted_and_refused_ones_are_not() {
        let (flow, req) = request_through(&Traffic, request(9, -1, &[("traffic-ok", 0, &[GOOD, GOOD, GOOD])]).1);
        assert!(matches!(flow, Flow::Next));
        let before = records_of("traffic-ok");
        answer_through(req, answer(&[("traffic-ok", 0, 0)])).expect("answered");
        assert_eq!(records_of("traffic-ok") - before, 3);

        let (_, req) = request_through(&Traffic, request(9, -1, &[("traffic-refused", 0, &[GOOD, GOOD])]).1);
        answer_through(req, answer(&[("traffic-refused", 0, 3)])).expect("answered");
        assert_eq!(records_of("traffic-refused"), 0, "UNKNOWN_TOPIC_OR_PARTITION: nothing stored");
    }
}
