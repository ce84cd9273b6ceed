//! Walks a response body before `kafka-protocol` decodes it, so that no count a peer made up is
//! allocated for.
//!
//! The generated decoders of `kafka-protocol` size every array with `Vec::with_capacity(count)`,
//! taking the count from the wire: a frame of a few bytes claiming a billion brokers would abort the
//! process. [`check_response`] walks the same fields in the same order as the decoder of each message
//! eventgate decodes, with the bounds-checked [`Reader`]; every count is checked against the bytes
//! that are left ([`Reader::array_len`], with each element's smallest encoding) before the decoder
//! would reserve anything for it.
//!
//! The walk must stay in step with the decoder, including in tagged fields: for a tag it knows, the
//! decoder reads the value from the stream and *ignores the size the tag declares*, so the walk does
//! the same (a tag declaring zero bytes may still be followed by an array the decoder reads). Unknown
//! tags are skipped by their size, as the decoder does. Whatever the decoder refuses anyway (a null
//! where a value is required, invalid UTF-8) is left to the decoder.

use kafka_protocol::messages::ApiKey;

use super::WireError;
use super::reader::Reader;

/// Checks that decoding `body` (a response after its header) as the response to `key` at `version`
/// cannot make `kafka-protocol` allocate for a count the bytes cannot hold. Covers the messages and
/// versions eventgate decodes; any other is refused.
pub fn check_response(key: ApiKey, version: i16, body: &[u8]) -> Result<(), WireError> {
    walk(key, version, body).map(|_| ())
}

/// Walks `body` and returns how many bytes the decoder would read.
fn walk(key: ApiKey, version: i16, body: &[u8]) -> Result<usize, WireError> {
    let flexible = match (key, version) {
        (ApiKey::ApiVersions, 0..=4) => version >= 3,
        (ApiKey::Metadata, 0..=13) => version >= 9,
        (ApiKey::FindCoordinator, 0..=6) => version >= 3,
        (ApiKey::DescribeCluster, 0..=2) => true,
        (ApiKey::Produce, 3..=13) => version >= 9,
        (ApiKey::Fetch, 4..=18) => version >= 12,
        (ApiKey::ShareFetch | ApiKey::ShareAcknowledge, 1) => true,
        _ => {
            return Err(WireError::Malformed { what: "response", why: "no decoding guard for this API version" });
        }
    };
    let w = &mut Walk { r: Reader::new(body), flexible };
    match key {
        ApiKey::ApiVersions => api_versions(w, version),
        ApiKey::Metadata => metadata(w, version),
        ApiKey::FindCoordinator => find_coordinator(w, version),
        ApiKey::DescribeCluster => describe_cluster(w, version),
        ApiKey::Produce => produce(w, version),
        ApiKey::Fetch => fetch(w, version),
        ApiKey::ShareFetch => share_fetch(w),
        _ => share_acknowledge(w),
    }?;
    Ok(w.r.position())
}

/// `n` when `cond` holds, else 0: for fields that only some versions have.
fn when(cond: bool, n: usize) -> usize {
    if cond { n } else { 0 }
}

fn invalid_tag() -> WireError {
    WireError::Malformed { what: "tagged field", why: "tag not valid for this version" }
}

/// A [`Reader`] that knows whether the message version is flexible (compact strings and arrays, and
/// a tagged-field section after every structure).
struct Walk<'a> {
    r: Reader<'a>,
    flexible: bool,
}

impl Walk<'_> {
    /// The smallest encodings of a string, an array count and a tagged-field section.
    fn mins(&self) -> (usize, usize, usize) {
        if self.flexible { (1, 1, 1) } else { (2, 4, 0) }
    }

    fn skip(&mut self, n: usize, what: &'static str) -> Result<(), WireError> {
        self.r.skip(n, what)
    }

    /// A string or a nullable one: null or not is for the decoder to judge.
    fn string(&mut self, what: &'static str) -> Result<(), WireError> {
        self.r.nullable_string(self.flexible, what).map(|_| ())
    }

    /// Nullable bytes (records).
    fn bytes(&mut self, what: &'static str) -> Result<(), WireError> {
        if self.flexible {
            self.r.compact_nullable(what)?;
        } else {
            self.r.nullable_bytes32(what)?;
        }
        Ok(())
    }

    /// An array (nullable or not) of elements taking at least `min` bytes each, walking each with
    /// `each` once the count has been checked.
    fn array(
        &mut self,
        min: usize,
        what: &'static str,
        mut each: impl FnMut(&mut Self) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        for _ in 0..self.r.array_len(self.flexible, min, what)? {
            each(self)?;
        }
        Ok(())
    }

    /// An array of `INT32`.
    fn int32s(&mut self, what: &'static str) -> Result<(), WireError> {
        let n = self.r.array_len(self.flexible, 4, what)?;
        self.r.skip(4 * n, what)
    }

    /// The tagged fields of a structure with no known tags (none before flexible versions).
    fn tags(&mut self, what: &'static str) -> Result<(), WireError> {
        self.tags_with(what, |_, _| Ok(false))
    }

    /// The tagged fields of a structure: `known(walk, tag)` walks the value of a tag the decoder
    /// knows, from the stream as the decoder does, and returns `true`; unknown tags (`false`) are
    /// skipped by their declared size.
    fn tags_with(
        &mut self,
        what: &'static str,
        mut known: impl FnMut(&mut Self, u32) -> Result<bool, WireError>,
    ) -> Result<(), WireError> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.r.uvarint(what)? as usize;
        // Every field takes at least a tag byte and a size byte.
        if n.saturating_mul(2) > self.r.remaining() {
            return Err(WireError::Malformed { what, why: "tagged field count exceeds the bytes sent" });
        }
        for _ in 0..n {
            let tag = self.r.uvarint(what)?;
            let size = self.r.uvarint(what)? as usize;
            if !known(self, tag)? {
                self.r.skip(size, what)?;
            }
        }
        Ok(())
    }

    /// A structure of `n` bytes of fixed-size fields, then its tagged fields.
    fn fixed(&mut self, n: usize, what: &'static str) -> Result<(), WireError> {
        self.skip(n, what)?;
        self.tags(what)
    }
}

/// `node_endpoints` (always in flexible versions): node id, host, port, rack.
fn node_endpoints(w: &mut Walk<'_>) -> Result<(), WireError> {
    w.array(4 + 1 + 4 + 1 + 1, "node endpoints", |w| {
        w.skip(4, "node id")?;
        w.string("host")?;
        w.skip(4, "port")?;
        w.string("rack")?;
        w.tags("node endpoint tagged fields")
    })
}

/// A tag whose value is a known structure: walked, and reported as known.
fn walked(r: Result<(), WireError>) -> Result<bool, WireError> {
    r.map(|()| true)
}

fn api_versions(w: &mut Walk<'_>, v: i16) -> Result<(), WireError> {
    let (_, _, t) = w.mins();
    w.skip(2, "error code")?;
    w.array(6 + t, "api keys", |w| w.fixed(6, "api version"))?;
    w.skip(when(v >= 1, 4), "throttle time")?;
    w.tags_with("api versions tagged fields", |w, tag| match tag {
        // supported_features and finalized_features: name, two versions.
        0 | 2 => walked(w.array(1 + 4 + 1, "features", |w| {
            w.string("feature name")?;
            w.fixed(4, "feature versions")
        })),
        1 => walked(w.skip(8, "finalized features epoch")),
        3 => walked(w.skip(1, "zk migration ready")),
        _ => Ok(false),
    })
}

fn metadata(w: &mut Walk<'_>, v: i16) -> Result<(), WireError> {
    let (s, a, t) = w.mins();
    w.skip(when(v >= 3, 4), "throttle time")?;
    w.array(4 + s + 4 + when(v >= 1, s) + t, "brokers", |w| {
        w.skip(4, "node id")?;
        w.string("host")?;
        w.skip(4, "port")?;
        if v >= 1 {
            w.string("rack")?;
        }
        w.tags("broker tagged fields")
    })?;
    if v >= 2 {
        w.string("cluster id")?;
    }
    w.skip(when(v >= 1, 4), "controller id")?;
    let topic_min = 2 + s + when(v >= 10, 16) + when(v >= 1, 1) + a + when(v >= 8, 4) + t;
    w.array(topic_min, "topics", |w| {
        w.skip(2, "topic error code")?;
        w.string("topic name")?;
        w.skip(when(v >= 10, 16) + when(v >= 1, 1), "topic id, is internal")?;
        let partition_min = 10 + when(v >= 7, 4) + 2 * a + when(v >= 5, a) + t;
        w.array(partition_min, "partitions", |w| {
            w.skip(10 + when(v >= 7, 4), "partition")?;
            w.int32s("replica nodes")?;
            w.int32s("isr nodes")?;
            if v >= 5 {
                w.int32s("offline replicas")?;
            }
            w.tags("partition tagged fields")
        })?;
        w.skip(when(v >= 8, 4), "topic authorized operations")?;
        w.tags("topic tagged fields")
    })?;
    w.skip(when((8..=10).contains(&v), 4) + when(v >= 13, 2), "cluster authorized operations, error code")?;
    w.tags("metadata tagged fields")
}

fn find_coordinator(w: &mut Walk<'_>, v: i16) -> Result<(), WireError> {
    w.skip(when(v >= 1, 4), "throttle time")?;
    if v <= 3 {
        w.skip(2, "error code")?;
        if v >= 1 {
            w.string("error message")?;
        }
        w.skip(4, "node id")?;
        w.string("host")?;
        w.skip(4, "port")?;
    } else {
        w.array(1 + 4 + 1 + 4 + 2 + 1 + 1, "coordinators", |w| {
            w.string("key")?;
            w.skip(4, "node id")?;
            w.string("host")?;
            w.skip(4 + 2, "port, error code")?;
            w.string("error message")?;
            w.tags("coordinator tagged fields")
        })?;
    }
    w.tags("find coordinator tagged fields")
}

fn describe_cluster(w: &mut Walk<'_>, v: i16) -> Result<(), WireError> {
    w.skip(4 + 2, "throttle time, error code")?;
    w.string("error message")?;
    w.skip(when(v >= 1, 1), "endpoint type")?;
    w.string("cluster id")?;
    w.skip(4, "controller id")?;
    w.array(4 + 1 + 4 + 1 + when(v >= 2, 1) + 1, "brokers", |w| {
        w.skip(4, "broker id")?;
        w.string("host")?;
        w.skip(4, "port")?;
        w.string("rack")?;
        w.skip(when(v >= 2, 1), "is fenced")?;
        w.tags("broker tagged fields")
    })?;
    w.skip(4, "cluster authorized operations")?;
    w.tags("describe cluster tagged fields")
}

fn produce(w: &mut Walk<'_>, v: i16) -> Result<(), WireError> {
    let (s, a, t) = w.mins();
    let topic_min = if v >= 13 { 16 } else { s } + a + t;
    w.array(topic_min, "produce topics", |w| {
        if v >= 13 {
            w.skip(16, "topic id")?;
        } else {
            w.string("topic name")?;
        }
        let partition_min = 4 + 2 + 8 + 8 + when(v >= 5, 8) + when(v >= 8, a + s) + t;
        w.array(partition_min, "produce partitions", |w| {
            w.skip(4 + 2 + 8 + 8 + when(v >= 5, 8), "partition")?;
            if v >= 8 {
                w.array(4 + s + t, "record errors", |w| {
                    w.skip(4, "batch index")?;
                    w.string("batch index error message")?;
                    w.tags("record error tagged fields")
                })?;
                w.string("error message")?;
            }
            w.tags_with("partition tagged fields", |w, tag| match tag {
                0 if v >= 10 => walked(w.fixed(4 + 4, "current leader")),
                0 => Err(invalid_tag()),
                _ => Ok(false),
            })
        })?;
        w.tags("topic tagged fields")
    })?;
    w.skip(4, "throttle time")?;
    w.tags_with("produce tagged fields", |w, tag| match tag {
        0 if v >= 10 => walked(node_endpoints(w)),
        0 => Err(invalid_tag()),
        _ => Ok(false),
    })
}

fn fetch(w: &mut Walk<'_>, v: i16) -> Result<(), WireError> {
    let (s, a, t) = w.mins();
    w.skip(4 + when(v >= 7, 2 + 4), "throttle time, error code, session id")?;
    let topic_min = when(v <= 12, s) + when(v >= 13, 16) + a + t;
    w.array(topic_min, "fetch topics", |w| {
        if v >= 13 {
            w.skip(16, "topic id")?;
        } else {
            w.string("topic name")?;
        }
        let head = 4 + 2 + 8 + 8 + when(v >= 5, 8);
        // Records are nullable bytes, whose length is encoded like an array count.
        let partition_min = head + a + when(v >= 11, 4) + a + t;
        w.array(partition_min, "fetch partitions", |w| {
            w.skip(head, "partition")?;
            w.array(16 + t, "aborted transactions", |w| w.fixed(16, "aborted transaction"))?;
            w.skip(when(v >= 11, 4), "preferred read replica")?;
            w.bytes("records")?;
            w.tags_with("partition tagged fields", |w, tag| match tag {
                0 => walked(w.fixed(4 + 8, "diverging epoch")),
                1 => walked(w.fixed(4 + 4, "current leader")),
                2 => walked(w.fixed(8 + 4, "snapshot id")),
                _ => Ok(false),
            })
        })?;
        w.tags("topic tagged fields")
    })?;
    w.tags_with("fetch tagged fields", |w, tag| match tag {
        0 if v >= 16 => walked(node_endpoints(w)),
        0 => Err(invalid_tag()),
        _ => Ok(false),
    })
}

fn share_fetch(w: &mut Walk<'_>) -> Result<(), WireError> {
    w.skip(4 + 2, "throttle time, error code")?;
    w.string("error message")?;
    w.skip(4, "acquisition lock timeout")?;
    w.array(16 + 1 + 1, "share fetch topics", |w| {
        w.skip(16, "topic id")?;
        w.array(4 + 2 + 1 + 2 + 1 + 9 + 1 + 1 + 1, "share fetch partitions", |w| {
            w.skip(4 + 2, "partition index, error code")?;
            w.string("error message")?;
            w.skip(2, "acknowledge error code")?;
            w.string("acknowledge error message")?;
            w.fixed(4 + 4, "current leader")?;
            w.bytes("records")?;
            w.array(8 + 8 + 2 + 1, "acquired records", |w| w.fixed(8 + 8 + 2, "acquired records"))?;
            w.tags("partition tagged fields")
        })?;
        w.tags("topic tagged fields")
    })?;
    // Not a tagged field in ShareFetch v1: a plain field after the topics.
    node_endpoints(w)?;
    w.tags("share fetch tagged fields")
}

fn share_acknowledge(w: &mut Walk<'_>) -> Result<(), WireError> {
    w.skip(4 + 2, "throttle time, error code")?;
    w.string("error message")?;
    w.array(16 + 1 + 1, "share acknowledge topics", |w| {
        w.skip(16, "topic id")?;
        w.array(4 + 2 + 1 + 9 + 1, "share acknowledge partitions", |w| {
            w.skip(4 + 2, "partition index, error code")?;
            w.string("error message")?;
            w.fixed(4 + 4, "current leader")?;
            w.tags("partition tagged fields")
        })?;
        w.tags("topic tagged fields")
    })?;
    node_endpoints(w)?;
    w.tags("share acknowledge tagged fields")
}

#[cfg(test)]
mod tests;
