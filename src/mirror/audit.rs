//! `eventgate audit`: reads the mirror stream back and says whether it holds what it should.
//!
//! It reads every message's headers (not the events) with an ordered consumer and groups the
//! event ids (`<topic>-<partition>-<offset>`) by partition, so that one pass tells how many
//! messages the stream holds, how many distinct ids, which ids are stored more than once, and
//! which offsets are missing between the first and the last of each partition (a gap is a record
//! the broker accepted that never reached the stream, or one that is not in the stream because
//! of a transaction marker or compaction upstream: read gaps with that in mind). Operators run it
//! after an incident; the exactly-once runs of BENCHMARKS.md and the tests use it too.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde::Serialize;

use crate::nats::NatsError;

/// Options of `eventgate audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// NATS server URL.
    #[arg(long, env = "EVENTGATE_NATS_URL")]
    pub nats_url: String,
    /// JetStream stream holding mirrored events.
    #[arg(long, default_value = "EVENTGATE")]
    pub stream: String,
    /// Only messages on these subjects (NATS wildcards), e.g. `eventgate.records.>`.
    #[arg(long, default_value = "")]
    pub subject: String,
    /// Keep reading until the stream holds at least this many messages (or `--wait-secs` passes).
    #[arg(long, default_value_t = 0)]
    pub expect: u64,
    /// How long to wait for `--expect` messages.
    #[arg(long, default_value_t = 60)]
    pub wait_secs: u64,
}

/// What `eventgate audit` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub stream: String,
    pub messages: u64,
    pub distinct_ids: u64,
    /// Messages beyond the first of their id.
    pub duplicates: u64,
    /// A few ids stored more than once.
    pub duplicate_examples: Vec<String>,
    /// Messages without a `Nats-Msg-Id` header.
    pub without_id: u64,
    pub partitions: usize,
    /// Offsets missing between the first and last offset of each partition.
    pub gaps: u64,
    /// A few of them, as event ids.
    pub gap_examples: Vec<String>,
}

const EXAMPLES: usize = 10;

/// Reads the stream and reports.
pub async fn run(args: AuditArgs) -> Result<Report, NatsError> {
    let err = |e: &dyn std::fmt::Display| NatsError::JetStream(format!("stream {}: {e}", args.stream));
    let client = crate::nats::with_url_credentials(async_nats::ConnectOptions::new(), &args.nats_url)
        .connect(args.nats_url.as_str())
        .await
        .map_err(|e| NatsError::Connect { url: crate::nats::redact_url(&args.nats_url), reason: e.to_string() })?;
    let js = jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    loop {
        let mut stream = js.get_stream(&args.stream).await.map_err(|e| err(&e))?;
        let info = stream.info().await.map_err(|e| err(&e))?;
        let (held, last) = (info.state.messages, info.state.last_sequence);
        if held < args.expect && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let mut tally = Tally::default();
        if held > 0 {
            let consumer = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    filter_subject: args.subject.clone(),
                    deliver_policy: consumer::DeliverPolicy::All,
                    headers_only: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| err(&e))?;
            // Nothing matches the filter: no message would ever come to end the read below.
            if consumer.cached_info().num_pending == 0 {
                return Ok(tally.report(args.stream));
            }
            let mut messages = consumer.messages().await.map_err(|e| err(&e))?;
            while let Some(m) = messages.next().await {
                let m = m.map_err(|e| err(&e))?;
                tally.add(m.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str()));
                let i = m.info().map_err(|e| err(&e))?;
                if i.pending == 0 || i.stream_sequence >= last {
                    break;
                }
            }
        }
        return Ok(tally.report(args.stream));
    }
}

/// Ids seen so far: offsets per partition, anything else as text.
#[derive(Default)]
pub struct Tally {
    messages: u64,
    without_id: u64,
    offsets: BTreeMap<(String, i32), Vec<i64>>,
    others: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, id: Option<&str>) {
        self.messages += 1;
        let Some(id) = id else {
            self.without_id += 1;
            return;
        };
        let mut parts = id.rsplitn(3, '-');
        let (offset, partition, topic) = (parts.next(), parts.next(), parts.next());
        match (offset.and_then(|o| o.parse::<i64>().ok()), partition.and_then(|p| p.parse::<i32>().ok()), topic) {
            (Some(o), Some(p), Some(t)) if !id.contains("-rejected-") => {
                self.offsets.entry((t.to_owned(), p)).or_default().push(o);
            }
            _ => self.others.push(id.to_owned()),
        }
    }

    pub fn report(self, stream: String) -> Report {
        let mut r = Report { stream, messages: self.messages, without_id: self.without_id, ..Default::default() };
        r.partitions = self.offsets.len();
        for ((topic, partition), mut offsets) in self.offsets {
            offsets.sort_unstable();
            let mut prev: Option<i64> = None;
            for o in offsets {
                match prev {
                    Some(p) if p == o => {
                        r.duplicates += 1;
                        if r.duplicate_examples.len() < EXAMPLES {
                            r.duplicate_examples.push(format!("{topic}-{partition}-{o}"));
                        }
                        continue;
                    }
                    Some(p) if o > p + 1 => {
                        r.gaps += (o - p - 1) as u64;
                        if r.gap_examples.len() < EXAMPLES {
                            r.gap_examples.push(format!("{topic}-{partition}-{}", p + 1));
                        }
                    }
                    _ => {}
                }
                r.distinct_ids += 1;
                prev = Some(o);
            }
        }
        let mut seen = HashSet::new();
        for id in self.others {
            if seen.contains(&id) {
                r.duplicates += 1;
                if r.duplicate_examples.len() < EXAMPLES {
                    r.duplicate_examples.push(id);
                }
            } else {
                r.distinct_ids += 1;
                seen.insert(id);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_duplicates_and_gaps_per_partition() {
        let mut t = Tally::default();
        for id in ["a-b-0-0", "a-b-0-1", "a-b-0-1", "a-b-0-4", "x-1-7", "x-1-rejected-9-0", "x-1-rejected-9-0"] {
            t.add(Some(id));
        }
        t.add(None);
        let r = t.report("S".into());
        assert_eq!(r.messages, 8);
        assert_eq!(r.without_id, 1);
        assert_eq!(r.partitions, 2);
        assert_eq!(r.distinct_ids, 5);
        assert_eq!(r.duplicates, 2);
        assert_eq!(r.gaps, 2);
        assert_eq!(r.gap_examples, vec!["a-b-0-2".to_owned()]);
    }
}
