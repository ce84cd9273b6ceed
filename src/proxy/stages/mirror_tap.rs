//! The mirror tap: once the broker has answered a Produce request, the partitions it accepted go
//! to the CloudEvents mirror with the offsets it assigned, all together
//! ([`crate::mirror::Mirror::submit_all`], which never waits and keeps the partitions read with
//! the request where they lie, together). What goes is what the produce stage listed in the request's notes ([`ToMirror`]):
//! the very bytes forwarded, with their validation outcomes. Partitions the broker refused are not
//! mirrored: nothing is mirrored that Kafka did not store.

use std::collections::HashMap;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;

use super::produce::ToMirror;
use crate::mirror::{Job, Producer};
use crate::proxy::chain::{AnswerCtx, AnswerHook, Ctx, Flow, Request, Stage, StageError};
use crate::proxy::produce::Mirrored;
use crate::wire::header::response_header_len;
use crate::wire::scan;

pub struct MirrorTap;

impl Stage for MirrorTap {
    fn name(&self) -> &'static str {
        "mirror_tap"
    }

    fn wants(&self, api_key: i16, api_version: i16) -> bool {
        // Message sets (v0–v2) carry no headers and no batch framing: they are not mirrored.
        api_key == ApiKey::Produce as i16 && api_version >= 3
    }

    fn on_request(&self, _: &Ctx<'_>, req: &mut Request) -> Result<Flow, StageError> {
        if let Some(tap) = Tap::of(req) {
            req.on_answer(tap);
        }
        Ok(Flow::Next)
    }
}

/// Hands the accepted partitions of one answer to the mirror.
struct Tap(Vec<Mirrored>);

impl Tap {
    /// The partitions the produce stage listed for the mirror, each with the room its records lie
    /// in when they are the request as read (the mirror's queue may then keep them there).
    fn of(req: &mut Request) -> Option<Self> {
        let ToMirror(mut parts) = req.notes.remove::<ToMirror>()?;
        for part in &mut parts {
            part.room = req.room_of(&part.records);
        }
        Some(Self(parts))
    }
}

impl AnswerHook for Tap {
    fn stage(&self) -> &'static str {
        "mirror_tap"
    }

    fn on_answer(self: Box<Self>, cx: &AnswerCtx<'_>, answer: Bytes) -> Result<Option<Bytes>, StageError> {
        let Some(mirror) = &cx.gw.mirror else { return Ok(Some(answer)) };
        let (jobs, ambiguous) = accepted(cx.api_version, &answer, self.0, &cx.session.producer())?;
        mirror.submit_all(jobs);
        for job in &ambiguous {
            mirror.drop_job(job, "the request named this partition more than once: which offsets are whose is unknown");
        }
        Ok(Some(answer))
    }
}

/// The jobs of the partitions the broker accepted, with their offsets; the answer is scanned in
/// place, not decoded.
/// A partition named twice in one request gets one answer for both: which offsets belong to which
/// batch is unknown, so such partitions are returned apart (second), to be left out of the mirror.
fn accepted(
    version: i16,
    answer: &Bytes,
    parts: Vec<Mirrored>,
    producer: &Producer,
) -> Result<(Vec<Job>, Vec<Job>), crate::wire::WireError> {
    let hlen = response_header_len(ApiKey::Produce, version, answer.get(4..).unwrap_or_default())?;
    let mut offsets = HashMap::new();
    scan::produce_response(&answer[4 + hlen..], version, |p| {
        if p.error_code == 0 {
            offsets.insert((p.topic, p.partition), (p.base_offset, p.log_append_time));
        }
    })?;
    let mut named: HashMap<(&str, i32), usize> = HashMap::new();
    for part in &parts {
        *named.entry((&*part.topic, part.partition)).or_default() += 1;
    }
    let twice: std::collections::HashSet<(String, i32)> =
        named.into_iter().filter(|(_, n)| *n > 1).map(|((t, p), _)| (t.to_owned(), p)).collect();
    let (mut jobs, mut ambiguous) = (Vec::new(), Vec::new());
    for part in parts {
        let Some(&(base, append)) = offsets.get(&(part.topic.as_bytes(), part.partition)) else { continue };
        let repeated = twice.contains(&(part.topic.to_string(), part.partition));
        let job = Job {
            topic: part.topic,
            partition: part.partition,
            base_offset: Some(base),
            log_append_time: append,
            records: part.records,
            outcomes: part.outcomes,
            route: part.route,
            producer: producer.clone(),
            room: part.room,
        };
        if repeated { ambiguous.push(job) } else { jobs.push(job) }
    }
    Ok((jobs, ambiguous))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::ProduceResponse;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::proxy::stages::testing::response_frame;

    fn part(topic: &str, partition: i32) -> Mirrored {
        Mirrored {
            topic: topic.into(),
            partition,
            records: Bytes::from_static(b"r"),
            outcomes: None,
            route: None,
            room: None,
        }
    }

    /// Records that are the request as read carry its room to the mirror; others (annotated
    /// records, built anew) carry none, and are copied.
    #[test]
    fn partitions_read_with_the_request_carry_its_room() {
        let frame = Bytes::from(vec![0u8; 64]);
        let meta = crate::wire::header::RequestMeta { api_key: 0, api_version: 9, correlation_id: 1 };
        let mut req = Request::read(meta, frame.clone(), 4_096);
        let annotated = Bytes::from(vec![1u8; 16]);
        req.notes.insert(ToMirror(vec![
            Mirrored { records: frame.slice(10..50), ..part("t", 0) },
            Mirrored { records: annotated, ..part("t", 1) },
        ]));
        let Some(Tap(parts)) = Tap::of(&mut req) else { panic!("the partitions were listed") };
        assert_eq!(parts.iter().map(|p| p.room).collect::<Vec<_>>(), [Some(4_096), None]);
        assert!(Tap::of(&mut req).is_none(), "the note is taken once");
    }

    /// The partitions of one answer go to the mirror together: read with the request, they stay
    /// where they were read (submitted one by one, each would be copied).
    #[test]
    fn an_answer_s_partitions_share_the_request_s_room() {
        let frame = Bytes::from(vec![0u8; 1_000]);
        let meta = crate::wire::header::RequestMeta { api_key: 0, api_version: 9, correlation_id: 1 };
        let mut req = Request::read(meta, frame.clone(), 1_000);
        req.notes.insert(ToMirror(vec![
            Mirrored { records: frame.slice(0..500), ..part("t", 0) },
            Mirrored { records: frame.slice(500..), ..part("t", 1) },
        ]));
        let tap = Tap::of(&mut req).expect("the partitions were listed");
        let mut resp = ProduceResponse::default();
        resp.responses.push(
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![
                    PartitionProduceResponse::default().with_index(0).with_base_offset(1),
                    PartitionProduceResponse::default().with_index(1).with_base_offset(1),
                ]),
        );
        let answer = response_frame(ApiKey::Produce, 9, 1, &resp);
        let (mirror, mut rx) = crate::mirror::Mirror::held(usize::MAX);
        let gw = crate::proxy::stages::testing::gateway_with(Some(mirror));
        let session = crate::proxy::chain::Session::new("127.0.0.1:1".parse().expect("address"));
        let cx = AnswerCtx { gw: &gw, session: &session, api_key: 0, api_version: 9 };
        assert!(Box::new(tap).on_answer(&cx, answer).expect("the answer passes").is_some());
        let jobs: Vec<Job> = std::iter::from_fn(|| rx.try_recv().ok()).map(|q| q.job).collect();
        let read = frame.as_ptr_range();
        assert_eq!(
            jobs.iter().map(|j| (j.partition, j.room, read.contains(&j.records.as_ptr()))).collect::<Vec<_>>(),
            [(0, Some(1_000), true), (1, Some(1_000), true)]
        );
    }

    #[test]
    fn only_what_the_broker_accepted_is_mirrored_with_its_offset() {
        let mut resp = ProduceResponse::default();
        resp.responses.push(
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![
                    PartitionProduceResponse::default().with_index(0).with_base_offset(40).with_log_append_time_ms(-1),
                    PartitionProduceResponse::default().with_index(1).with_error_code(6).with_base_offset(-1),
                ]),
        );
        let answer = response_frame(ApiKey::Produce, 9, 1, &resp);
        let who = Producer { client_id: Some("app".into()), principal: Some("alice".into()) };
        let (jobs, ambiguous) = accepted(9, &answer, vec![part("t", 0), part("t", 1), part("u", 0)], &who).unwrap();
        assert!(ambiguous.is_empty());
        assert_eq!(jobs[0].producer, who);
        assert_eq!(jobs.len(), 1);
        assert_eq!((&*jobs[0].topic, jobs[0].partition, jobs[0].base_offset), ("t", 0, Some(40)));
    }

    #[test]
    fn a_partition_named_twice_is_left_out_of_the_mirror() {
        let mut resp = ProduceResponse::default();
        resp.responses.push(
            TopicProduceResponse::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_responses(vec![PartitionProduceResponse::default().with_index(0).with_base_offset(5)]),
        );
        let answer = response_frame(ApiKey::Produce, 9, 1, &resp);
        let (jobs, ambiguous) = accepted(9, &answer, vec![part("t", 0), part("t", 0)], &Producer::default()).unwrap();
        assert!(jobs.is_empty());
        assert_eq!(ambiguous.len(), 2);
    }

    #[test]
    fn requests_without_parts_to_mirror_get_no_hook() {
        let frame = crate::proxy::stages::testing::request(
            ApiKey::Produce,
            9,
            1,
            &kafka_protocol::messages::ProduceRequest::default().with_acks(-1),
        );
        let (_, req) = crate::proxy::stages::testing::request_through(&MirrorTap, frame);
        assert!(req.into_hooks().is_empty());
    }
}
