//! Produce requests on their way to the broker: validation, annotation and rejection.
//!
//! [`inspect`] decides, per topic, whether records must be checked (see
//! [`Policies::decide`](crate::validate::Policies::decide)) and what becomes of the request:
//!
//! * nothing to change: the original frame is forwarded (the common case costs one walk);
//! * batches annotated and/or partitions refused: the request is rebuilt without the refused
//!   partitions, and their errors are merged into the broker's answer ([`Merge`]), so the client
//!   gets one answer, in order, as if one broker had refused those partitions;
//! * every partition refused: eventgate answers itself and forwards nothing;
//! * `acks=0` and something refused: the valid rest is forwarded, then the connection is closed,
//!   which is how a broker tells an `acks=0` producer that a request failed.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use std::sync::Arc;

use crate::mirror::Job;
use crate::telemetry::ValidationMetrics;
use crate::validate::batch::{Verdict, check_partition, codes, now_rfc3339};
use crate::validate::{Decision, Outcome, Route, Validation};
use crate::wire::WireError;
use crate::wire::header::RequestMeta;
use crate::wire::produce::{ProduceRequestView, acks};
use crate::wire::reader::Reader;

/// A partition eventgate refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub topic: String,
    pub partition: i32,
    pub error_code: i16,
    pub message: String,
    /// `(record index, reason)`, reported as `record_errors` from Produce v8.
    pub record_errors: Vec<(i32, String)>,
}

/// Partition errors to merge into the broker's answer.
#[derive(Debug, Clone)]
pub struct Merge {
    pub refused: Vec<Refused>,
    /// Every (topic, partition) of the request, in request order.
    pub order: Vec<(String, i32)>,
}

/// A partition as it went to the broker, for the CloudEvents mirror.
#[derive(Debug)]
pub struct Mirrored {
    pub topic: String,
    pub partition: i32,
    /// The records field as forwarded (annotated when it was).
    pub records: Bytes,
    pub outcomes: Option<Arc<Vec<Outcome>>>,
    pub route: Option<Arc<Route>>,
}

/// What becomes of a Produce request.
#[derive(Debug)]
pub enum Plan {
    /// Forward `frame` (the original when `None`).
    Forward {
        frame: Option<Bytes>,
        /// The client's `acks`: 0 means it expects no answer.
        client_acks: i16,
        /// The broker will answer (eventgate asked for `acks=1` to learn the offsets of an `acks=0`
        /// request for the mirror; that answer is not forwarded).
        broker_answers: bool,
        /// eventgate's refusals to merge into the answer.
        merge: Option<Box<Merge>>,
        /// Partitions to mirror once the broker has accepted them.
        mirror: Option<Box<Vec<Mirrored>>>,
    },
    /// Forward nothing; answer the client with this frame.
    Answer(Bytes),
    /// `acks=0` with refused partitions: forward `frame` (the valid rest), then close.
    ForwardThenClose { frame: Option<Bytes>, reason: String },
}

/// A plan, and the refused records to mirror at once (they never reach Kafka).
#[derive(Debug)]
pub struct Inspection {
    pub plan: Plan,
    pub refused: Vec<Job>,
}

fn forward(frame: Option<Bytes>, acks: i16) -> Inspection {
    Inspection {
        plan: Plan::Forward { frame, client_acks: acks, broker_answers: acks != 0, merge: None, mirror: None },
        refused: Vec::new(),
    }
}

/// Inspects a Produce request frame. With `mirror_on`, the partitions that go to the broker are
/// listed for the mirror, and an `acks=0` request is sent with `acks=1` so their offsets are known.
pub fn inspect(
    validation: &Validation,
    metrics: &ValidationMetrics,
    meta: &RequestMeta,
    frame: &Bytes,
    mirror_on: bool,
) -> Result<Inspection, WireError> {
    let body_at = meta.body_offset(frame)?;
    let body = &frame[body_at..];
    let version = meta.api_version;
    let catalog = validation.catalog.load();
    let policies = &validation.policies;
    if !policies.active(&catalog) && !mirror_on {
        return Ok(forward(None, acks(body, version)?));
    }
    let view = ProduceRequestView::parse(body, version)?;
    let decisions: Vec<Decision<'_>> = view.topics.iter().map(|t| policies.decide(&catalog, t.name)).collect();
    let all_pass = decisions.iter().all(|d| matches!(d, Decision::Pass));
    if all_pass && (!mirror_on || version < 3) {
        // Message sets (v0-v2) are not mirrored: they carry no headers and no batch framing.
        return Ok(forward(None, view.acks));
    }
    // Request order of every partition, for answers eventgate writes or merges (built only then).
    let order = || -> Vec<(String, i32)> {
        view.topics.iter().flat_map(|t| t.partitions.iter().map(|p| (t.name.to_owned(), p.index))).collect()
    };
    let partitions = view.topics.iter().map(|t| t.partitions.len()).sum::<usize>();

    if version < 3 {
        // Message sets (magic 0/1) have no headers, so nothing can be annotated: refuse the request.
        metrics.legacy_refused.increment(1);
        let order = order();
        let refused = order
            .iter()
            .map(|(topic, partition)| Refused {
                topic: topic.clone(),
                partition: *partition,
                error_code: codes::UNSUPPORTED_FOR_MESSAGE_FORMAT,
                message: "eventgate validates this topic and needs Produce v3 or later (record batches)".into(),
                record_errors: Vec::new(),
            })
            .collect();
        return Ok(Inspection { plan: refuse_all(meta, view.acks, Merge { refused, order })?, refused: Vec::new() });
    }

    // One timestamp for every annotation of the request, taken only if something is validated.
    let ts = if decisions.iter().any(|d| matches!(d, Decision::Check { .. })) { now_rfc3339() } else { String::new() };
    let mut replaced: Vec<(String, i32, Bytes)> = Vec::new();
    let mut refused: Vec<Refused> = Vec::new();
    let mut mirrored: Vec<Mirrored> = Vec::new();
    let mut refused_jobs: Vec<Job> = Vec::new();
    for (topic, decision) in view.topics.iter().zip(&decisions) {
        match decision {
            Decision::Pass => {
                if mirror_on {
                    for p in &topic.partitions {
                        let Some(records) = p.records else { continue };
                        mirrored.push(Mirrored {
                            topic: topic.name.to_owned(),
                            partition: p.index,
                            records: frame.slice_ref(records),
                            outcomes: None,
                            route: None,
                        });
                    }
                }
            }
            Decision::RejectUnknown => {
                for p in &topic.partitions {
                    metrics.partitions_rejected.increment(1);
                    refused.push(Refused {
                        topic: topic.name.to_owned(),
                        partition: p.index,
                        error_code: codes::INVALID_RECORD,
                        message: format!(
                            "topic {} is not described by any AsyncAPI document (unknown_topic: reject)",
                            topic.name
                        ),
                        record_errors: Vec::new(),
                    });
                    if let (true, Some(records)) = (mirror_on, p.records) {
                        refused_jobs.push(refused_job(topic.name, p.index, frame.slice_ref(records), None, None));
                    }
                }
            }
            Decision::Check { route, policy } => {
                for p in &topic.partitions {
                    let Some(records) = p.records else { continue };
                    let result = check_partition(route, *policy, records, &ts, policies.max_decompressed_bytes);
                    metrics.count(&result.counts);
                    let outcomes = Arc::new(result.outcomes);
                    let keep = |bytes: Bytes| Mirrored {
                        topic: topic.name.to_owned(),
                        partition: p.index,
                        records: bytes,
                        outcomes: Some(outcomes.clone()),
                        route: Some((*route).clone()),
                    };
                    match result.verdict {
                        Verdict::Untouched => {
                            if mirror_on {
                                mirrored.push(keep(frame.slice_ref(records)));
                            }
                        }
                        Verdict::Annotated(bytes) => {
                            metrics.partitions_annotated.increment(1);
                            if mirror_on {
                                mirrored.push(keep(bytes.clone()));
                            }
                            replaced.push((topic.name.to_owned(), p.index, bytes));
                        }
                        Verdict::Rejected(record_errors) => {
                            metrics.partitions_rejected.increment(1);
                            let first =
                                record_errors.first().map(|(i, e)| format!("record {i}: {e}")).unwrap_or_default();
                            refused.push(Refused {
                                topic: topic.name.to_owned(),
                                partition: p.index,
                                error_code: codes::INVALID_RECORD,
                                message: format!(
                                    "{} record(s) do not match AsyncAPI document {}; first: {first}",
                                    record_errors.len(),
                                    route.doc_id
                                ),
                                record_errors,
                            });
                            if mirror_on {
                                refused_jobs.push(refused_job(
                                    topic.name,
                                    p.index,
                                    frame.slice_ref(records),
                                    Some(outcomes.clone()),
                                    Some((*route).clone()),
                                ));
                            }
                        }
                        Verdict::Unreadable { code, message } => {
                            metrics.partitions_unreadable.increment(1);
                            refused.push(Refused {
                                topic: topic.name.to_owned(),
                                partition: p.index,
                                error_code: code,
                                message,
                                record_errors: Vec::new(),
                            });
                        }
                    }
                }
            }
        }
    }
    if refused.len() == partitions {
        let plan = refuse_all(meta, view.acks, Merge { refused, order: order() })?;
        return Ok(Inspection { plan, refused: refused_jobs });
    }
    let mut out = if replaced.is_empty() && refused.is_empty() {
        None
    } else {
        Some(rebuild(frame, body_at, version, &replaced, &refused)?)
    };
    if view.acks == 0 && !refused.is_empty() {
        metrics.acks0_closed.increment(1);
        return Ok(Inspection {
            plan: Plan::ForwardThenClose {
                frame: Some(out.unwrap_or_else(|| frame.clone())),
                reason: describe(&refused),
            },
            refused: refused_jobs,
        });
    }
    let mut broker_answers = view.acks != 0;
    if mirror_on && !broker_answers {
        out = Some(with_acks(out.as_ref().unwrap_or(frame), version, 1)?);
        broker_answers = true;
    }
    let merge = (!refused.is_empty()).then(|| Box::new(Merge { refused, order: order() }));
    let mirror = (mirror_on && !mirrored.is_empty()).then(|| Box::new(mirrored));
    Ok(Inspection {
        plan: Plan::Forward { frame: out, client_acks: view.acks, broker_answers, merge, mirror },
        refused: refused_jobs,
    })
}

fn refused_job(
    topic: &str,
    partition: i32,
    records: Bytes,
    outcomes: Option<Arc<Vec<Outcome>>>,
    route: Option<Arc<Route>>,
) -> Job {
    Job { topic: topic.to_owned(), partition, base_offset: None, log_append_time: -1, records, outcomes, route }
}

/// `frame` with its `acks` set to `acks`.
fn with_acks(frame: &Bytes, version: i16, acks: i16) -> Result<Bytes, WireError> {
    let meta = RequestMeta::peek(frame)?;
    let body_at = meta.body_offset(frame)?;
    let mut r = Reader::new(&frame[body_at..]);
    if version >= 3 {
        r.nullable_string(version >= 9, "transactional id")?;
    }
    let at = body_at + r.position();
    r.i16("acks")?;
    let mut out = BytesMut::from(&frame[..]);
    out[at..at + 2].copy_from_slice(&acks.to_be_bytes());
    Ok(out.freeze())
}

fn describe(refused: &[Refused]) -> String {
    let parts: Vec<String> =
        refused.iter().take(5).map(|r| format!("{}[{}]: {}", r.topic, r.partition, r.message)).collect();
    format!("{} partition(s) refused: {}", refused.len(), parts.join("; "))
}

fn refuse_all(meta: &RequestMeta, acks: i16, merge: Merge) -> Result<Plan, WireError> {
    if acks == 0 {
        return Ok(Plan::ForwardThenClose { frame: None, reason: describe(&merge.refused) });
    }
    local_answer(meta, &merge).map(Plan::Answer)
}

/// The request again, with annotated records swapped in and refused partitions left out. The
/// request header is kept byte for byte.
fn rebuild(
    frame: &Bytes,
    body_at: usize,
    version: i16,
    replaced: &[(String, i32, Bytes)],
    refused: &[Refused],
) -> Result<Bytes, WireError> {
    let mut body = frame.slice(body_at..);
    let mut req = ProduceRequest::decode(&mut body, version).map_err(|source| WireError::Decode {
        api: "Produce",
        version,
        source,
    })?;
    for t in &mut req.topic_data {
        let name = t.name.0.as_str();
        t.partition_data.retain(|p| !refused.iter().any(|r| r.topic == name && r.partition == p.index));
        for p in &mut t.partition_data {
            if let Some((_, _, bytes)) = replaced.iter().find(|(topic, idx, _)| topic == name && *idx == p.index) {
                p.records = Some(bytes.clone());
            }
        }
    }
    req.topic_data.retain(|t| !t.partition_data.is_empty());
    let size = req.compute_size(version).map_err(|source| WireError::Encode { api: "Produce", version, source })?;
    let header = &frame[4..body_at];
    let mut out = BytesMut::with_capacity(4 + header.len() + size);
    out.put_i32((header.len() + size) as i32);
    out.put_slice(header);
    req.encode(&mut out, version).map_err(|source| WireError::Encode { api: "Produce", version, source })?;
    Ok(out.freeze())
}

fn partition_response(r: &Refused, version: i16) -> PartitionProduceResponse {
    let mut p = PartitionProduceResponse::default()
        .with_index(r.partition)
        .with_error_code(r.error_code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1);
    if version >= 8 {
        p.error_message = Some(StrBytes::from_string(r.message.clone()));
        p.record_errors = r
            .record_errors
            .iter()
            .map(|(i, m)| {
                BatchIndexAndErrorMessage::default()
                    .with_batch_index(*i)
                    .with_batch_index_error_message(Some(StrBytes::from_string(m.clone())))
            })
            .collect();
    }
    p
}

/// Puts eventgate's refusals into a broker's answer and sorts topics and partitions back into
/// request order.
pub fn merge_into(resp: &mut ProduceResponse, merge: &Merge, version: i16) {
    for r in &merge.refused {
        let topic = match resp.responses.iter_mut().position(|t| t.name.0.as_str() == r.topic) {
            Some(i) => &mut resp.responses[i],
            None => {
                resp.responses
                    .push(TopicProduceResponse::default().with_name(TopicName(StrBytes::from_string(r.topic.clone()))));
                let last = resp.responses.len() - 1;
                &mut resp.responses[last]
            }
        };
        topic.partition_responses.push(partition_response(r, version));
    }
    let rank = |topic: &str, partition: Option<i32>| {
        merge.order.iter().position(|(t, p)| t == topic && partition.is_none_or(|x| x == *p)).unwrap_or(usize::MAX)
    };
    resp.responses.sort_by_key(|t| rank(t.name.0.as_str(), None));
    for t in &mut resp.responses {
        let name = t.name.0.clone();
        t.partition_responses.sort_by_key(|p| rank(name.as_str(), Some(p.index)));
    }
}

/// eventgate's own answer to a request whose every partition it refused.
fn local_answer(meta: &RequestMeta, merge: &Merge) -> Result<Bytes, WireError> {
    let version = meta.api_version;
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i32(meta.correlation_id);
    if version < 3 {
        // v0–v2 answers: [topic [partition, error, base offset, (v2) log append time]], (v1+) throttle.
        let mut topics: Vec<(&str, Vec<&Refused>)> = Vec::new();
        for r in &merge.refused {
            match topics.iter_mut().find(|(t, _)| *t == r.topic) {
                Some((_, ps)) => ps.push(r),
                None => topics.push((&r.topic, vec![r])),
            }
        }
        out.put_i32(topics.len() as i32);
        for (name, parts) in topics {
            out.put_i16(name.len() as i16);
            out.put_slice(name.as_bytes());
            out.put_i32(parts.len() as i32);
            for r in parts {
                out.put_i32(r.partition);
                out.put_i16(r.error_code);
                out.put_i64(-1);
                if version >= 2 {
                    out.put_i64(-1);
                }
            }
        }
        if version >= 1 {
            out.put_i32(0);
        }
    } else {
        if ApiKey::Produce.response_header_version(version) >= 1 {
            out.put_u8(0); // no header tagged fields
        }
        let mut resp = ProduceResponse::default();
        merge_into(&mut resp, merge, version);
        resp.encode(&mut out, version).map_err(|source| WireError::Encode { api: "Produce", version, source })?;
    }
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    Ok(out.freeze())
}

#[cfg(test)]
mod tests;
