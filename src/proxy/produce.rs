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
//!
//! Topic names Kafka cannot hold (longer than 249 bytes, other characters) are refused with
//! INVALID_TOPIC_EXCEPTION before anything else, as the broker would; and a request whose compressed
//! batches expand past the request's budget has the partitions past it refused with
//! MESSAGE_TOO_LARGE (a Java producer then splits the batch and retries).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{
    BatchIndexAndErrorMessage, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::mirror::Job;
use crate::telemetry::ValidationMetrics;
use crate::telemetry::rates::Count;
use crate::validate::batch::{Budget, Verdict, check_partition, codes, now_rfc3339};
use crate::validate::{Decision, Outcome, Route, Validation};
use crate::wire::WireError;
use crate::wire::header::RequestMeta;
use crate::wire::produce::ProduceRequestView;

/// A partition eventgate refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Shared by every partition of the topic: a request names it once, so eventgate holds it once.
    pub topic: Arc<str>,
    pub partition: i32,
    pub error_code: i16,
    /// Shared by the partitions refused for the same reason (a clone is a reference count).
    pub message: StrBytes,
    /// `(record index, reason)`, reported as `record_errors` from Produce v8.
    pub record_errors: Vec<(i32, String)>,
}

/// Partition errors to merge into the broker's answer.
#[derive(Debug, Clone)]
pub struct Merge {
    pub refused: Vec<Refused>,
    /// Every (topic, partition) of the request, in request order.
    pub order: Vec<(Arc<str>, i32)>,
}

/// A partition as it went to the broker, for the CloudEvents mirror.
#[derive(Debug)]
pub struct Mirrored {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The records field as forwarded (annotated when it was).
    pub records: Bytes,
    pub outcomes: Option<Arc<Vec<Outcome>>>,
    pub route: Option<Arc<Route>>,
    /// The allocation `records` lie in, when they are the request as read (set by the mirror tap).
    pub room: Option<usize>,
}

/// What becomes of a Produce request.
#[derive(Debug)]
pub enum Plan {
    /// Forward `frame` (the original when `None`).
    Forward {
        frame: Option<Bytes>,
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

fn untouched() -> Inspection {
    Inspection { plan: Plan::Forward { frame: None, merge: None, mirror: None }, refused: Vec::new() }
}

/// Longest topic name Kafka accepts.
const MAX_TOPIC_NAME: usize = 249;

/// Whether Kafka would accept `name` as a topic name: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn legal_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What eventgate does with one topic of a request.
enum TopicPlan<'c> {
    /// A policy decision.
    Decided(Decision<'c>),
    /// Not a topic name Kafka accepts: refused before any work.
    Illegal,
}

/// Inspects a Produce request frame. With `mirror_on`, the partitions that go to the broker are
/// listed for the mirror (the `acks_zero` stage then makes sure the broker answers with offsets).
///
/// Work is linear in the request: each topic name is held once, partitions are looked up by hash,
/// and everything a compressed batch expands to is paid from one [`Budget`] per request.
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
        return Ok(untouched());
    }
    let view = ProduceRequestView::parse(body, version)?;
    let plans: Vec<TopicPlan<'_>> = view
        .topics
        .iter()
        .map(|t| match legal_topic(t.name) {
            true => TopicPlan::Decided(policies.decide(&catalog, t.name)),
            false => TopicPlan::Illegal,
        })
        .collect();
    let all_pass = plans.iter().all(|d| matches!(d, TopicPlan::Decided(Decision::Pass)));
    if all_pass && (!mirror_on || version < 3) {
        // Message sets (v0-v2) are not mirrored: they carry no headers and no batch framing.
        return Ok(untouched());
    }
    let names: Vec<Arc<str>> = view.topics.iter().map(|t| Arc::from(t.name)).collect();
    // Request order of every partition, for answers eventgate writes or merges (built only then).
    let order = || -> Vec<(Arc<str>, i32)> {
        view.topics.iter().zip(&names).flat_map(|(t, n)| t.partitions.iter().map(|p| (n.clone(), p.index))).collect()
    };
    let partitions = view.topics.iter().map(|t| t.partitions.len()).sum::<usize>();
    let refuse = |topic: &Arc<str>, partition: i32, error_code: i16, message: StrBytes| Refused {
        topic: topic.clone(),
        partition,
        error_code,
        message,
        record_errors: Vec::new(),
    };

    if version < 3 {
        // Message sets (magic 0/1) have no headers, so nothing can be annotated: refuse the request.
        metrics.legacy_refused.increment(1);
        const WHY: &str = "eventgate validates this topic and needs Produce v3 or later (record batches)";
        let order = order();
        let refused = order
            .iter()
            .map(|(t, p)| refuse(t, *p, codes::UNSUPPORTED_FOR_MESSAGE_FORMAT, StrBytes::from_static_str(WHY)))
            .collect();
        return Ok(Inspection { plan: refuse_all(meta, view.acks, Merge { refused, order })?, refused: Vec::new() });
    }

    // Per-topic counts for the console's rates, added when the inspection ends, whichever way.
    let mut tally = metrics.tally();
    // Refused partitions are not read: count what their bytes can hold, not what they claim.
    let declared = |records: Option<&[u8]>| records.map_or(0, crate::wire::records::plausible_records);
    // One timestamp for every annotation of the request, taken only if something is validated.
    let checks = plans.iter().any(|d| matches!(d, TopicPlan::Decided(Decision::Check { .. })));
    let ts = if checks { now_rfc3339() } else { String::new() };
    let mut budget = Budget::new(policies.max_decompressed_bytes);
    let mut replaced: HashMap<(usize, i32), Bytes> = HashMap::new();
    let mut refused: Vec<Refused> = Vec::new();
    let mut mirrored: Vec<Mirrored> = Vec::new();
    let mut refused_jobs: Vec<Job> = Vec::new();
    for (t, ((topic, plan), name)) in view.topics.iter().zip(&plans).zip(&names).enumerate() {
        match plan {
            TopicPlan::Illegal => {
                let why = StrBytes::from_string(format!(
                    "eventgate refuses topic names Kafka cannot hold (1-{MAX_TOPIC_NAME} of a-z A-Z 0-9 . _ -); \
                     this one is {} bytes",
                    topic.name.len()
                ));
                for p in &topic.partitions {
                    metrics.partitions_rejected.increment(1);
                    refused.push(refuse(name, p.index, codes::INVALID_TOPIC_EXCEPTION, why.clone()));
                    tally.0.push((topic.name, Count::Refused, declared(p.records)));
                }
            }
            TopicPlan::Decided(Decision::Pass) => {
                if mirror_on {
                    for p in &topic.partitions {
                        let Some(records) = p.records else { continue };
                        mirrored.push(Mirrored {
                            topic: name.clone(),
                            partition: p.index,
                            records: frame.slice_ref(records),
                            outcomes: None,
                            route: None,
                            room: None,
                        });
                    }
                }
            }
            TopicPlan::Decided(Decision::RejectUnknown) => {
                // The answer names the topic already: repeating it in every partition's message
                // would make a request of many small partitions cost many times its size.
                let why = StrBytes::from_static_str(
                    "the topic is not described by any AsyncAPI document (unknown_topic: reject)",
                );
                for p in &topic.partitions {
                    metrics.partitions_rejected.increment(1);
                    refused.push(refuse(name, p.index, codes::INVALID_RECORD, why.clone()));
                    tally.0.push((topic.name, Count::Refused, declared(p.records)));
                    if let (true, Some(records)) = (mirror_on, p.records) {
                        refused_jobs.push(refused_job(name, p.index, frame.slice_ref(records), None, None));
                    }
                }
            }
            TopicPlan::Decided(Decision::Check { route, policy }) => {
                for p in &topic.partitions {
                    let Some(records) = p.records else { continue };
                    let result = check_partition(route, *policy, records, &ts, &mut budget);
                    metrics.count(topic.name, &result.counts, &mut tally);
                    let outcomes = Arc::new(result.outcomes);
                    let keep = |bytes: Bytes| Mirrored {
                        topic: name.clone(),
                        partition: p.index,
                        records: bytes,
                        outcomes: Some(outcomes.clone()),
                        route: Some((*route).clone()),
                        room: None,
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
                            replaced.insert((t, p.index), bytes);
                        }
                        Verdict::Rejected { invalid, errors } => {
                            metrics.partitions_rejected.increment(1);
                            tally.0.push((topic.name, Count::Refused, outcomes.len() as u64));
                            let first = errors.first().map(|(i, e)| format!("record {i}: {e}")).unwrap_or_default();
                            let message = format!(
                                "{invalid} record(s) do not match AsyncAPI document {}; first: {first}",
                                route.doc_id
                            );
                            refused.push(Refused {
                                record_errors: errors,
                                ..refuse(name, p.index, codes::INVALID_RECORD, StrBytes::from_string(message))
                            });
                            if mirror_on {
                                refused_jobs.push(refused_job(
                                    name,
                                    p.index,
                                    frame.slice_ref(records),
                                    Some(outcomes.clone()),
                                    Some((*route).clone()),
                                ));
                            }
                        }
                        Verdict::Unreadable { code, message } => {
                            metrics.partitions_unreadable.increment(1);
                            tally.0.push((topic.name, Count::Refused, declared(Some(records))));
                            refused.push(refuse(name, p.index, code, StrBytes::from_string(message)));
                        }
                        Verdict::OverBudget(message) => {
                            metrics.partitions_over_budget.increment(1);
                            tally.0.push((topic.name, Count::Refused, declared(Some(records))));
                            refused.push(refuse(
                                name,
                                p.index,
                                codes::MESSAGE_TOO_LARGE,
                                StrBytes::from_string(message),
                            ));
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
    let out = if replaced.is_empty() && refused.is_empty() {
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
    let merge = (!refused.is_empty()).then(|| Box::new(Merge { refused, order: order() }));
    let mirror = (mirror_on && !mirrored.is_empty()).then(|| Box::new(mirrored));
    Ok(Inspection { plan: Plan::Forward { frame: out, merge, mirror }, refused: refused_jobs })
}

fn refused_job(
    topic: &Arc<str>,
    partition: i32,
    records: Bytes,
    outcomes: Option<Arc<Vec<Outcome>>>,
    route: Option<Arc<Route>>,
) -> Job {
    Job {
        topic: topic.clone(),
        partition,
        base_offset: None,
        log_append_time: -1,
        records,
        outcomes,
        route,
        producer: Default::default(),
        room: None,
    }
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

/// The request again, with annotated records swapped in (keyed by topic index in the request and
/// partition) and refused partitions left out. The request header is kept byte for byte.
fn rebuild(
    frame: &Bytes,
    body_at: usize,
    version: i16,
    replaced: &HashMap<(usize, i32), Bytes>,
    refused: &[Refused],
) -> Result<Bytes, WireError> {
    let mut body = frame.slice(body_at..);
    let mut req = ProduceRequest::decode(&mut body, version).map_err(|source| WireError::Decode {
        api: "Produce",
        version,
        source,
    })?;
    let refused: HashSet<(&str, i32)> = refused.iter().map(|r| (&*r.topic, r.partition)).collect();
    for (i, t) in req.topic_data.iter_mut().enumerate() {
        let name = t.name.0.as_str();
        t.partition_data.retain(|p| !refused.contains(&(name, p.index)));
        for p in &mut t.partition_data {
            if let Some(bytes) = replaced.get(&(i, p.index)) {
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
        p.error_message = Some(r.message.clone());
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
/// request order, in time linear in the number of partitions.
pub fn merge_into(resp: &mut ProduceResponse, merge: &Merge, version: i16) {
    let broker_said_nothing = resp.responses.is_empty();
    let mut topic_at: HashMap<Arc<str>, usize> = HashMap::new();
    for (i, t) in resp.responses.iter().enumerate() {
        topic_at.entry(Arc::from(t.name.0.as_str())).or_insert(i);
    }
    for r in &merge.refused {
        let i = *topic_at.entry(r.topic.clone()).or_insert_with(|| {
            resp.responses
                .push(TopicProduceResponse::default().with_name(TopicName(StrBytes::from_string(r.topic.to_string()))));
            resp.responses.len() - 1
        });
        resp.responses[i].partition_responses.push(partition_response(r, version));
    }
    if broker_said_nothing && merge.refused.len() == merge.order.len() {
        // eventgate refused everything: the refusals were listed in request order already.
        return;
    }
    // Ranks in the request: the first place of each topic, and of each (topic, partition).
    let mut topic_rank: HashMap<&str, usize> = HashMap::new();
    let mut partition_rank: HashMap<(&str, i32), usize> = HashMap::new();
    for (rank, (t, p)) in merge.order.iter().enumerate() {
        topic_rank.entry(t).or_insert(rank);
        partition_rank.entry((t, *p)).or_insert(rank);
    }
    resp.responses.sort_by_key(|t| topic_rank.get(t.name.0.as_str()).copied().unwrap_or(usize::MAX));
    for t in &mut resp.responses {
        let name = t.name.0.as_str();
        t.partition_responses.sort_by_key(|p| partition_rank.get(&(name, p.index)).copied().unwrap_or(usize::MAX));
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
        let mut at: HashMap<&str, usize> = HashMap::new();
        for r in &merge.refused {
            let i = *at.entry(&r.topic).or_insert_with(|| {
                topics.push((&r.topic, Vec::new()));
                topics.len() - 1
            });
            topics[i].1.push(r);
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
pub(crate) mod tests;
