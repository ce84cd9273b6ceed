//! Broker address rewriting: every host/port a broker tells a client is replaced by an eventgate
//! listener, so the client never connects to a broker directly.
//!
//! Addresses reach clients through `Metadata`, `FindCoordinator` (top-level fields up to v3, a
//! `coordinators` array from v4), `DescribeCluster`, and since KIP-951 through `node_endpoints`: a
//! tagged field of `Produce` (v10+) and `Fetch` (v16+) answers, a plain field of `ShareFetch` and
//! `ShareAcknowledge` answers.
//! `Produce` and `Fetch` responses are hot, and `node_endpoints` appears in them only after a
//! leadership change, so they are first *scanned* in place for that tag and decoded only when it is
//! there; every other response that needs no change goes out as its original bytes.
//!
//! The mapping from upstream address to advertised address is supplied by the caller (the proxy's
//! node registry), which keeps this module pure and testable.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, DescribeClusterResponse, FetchResponse, FindCoordinatorResponse, MetadataResponse,
    ProduceResponse, ShareAcknowledgeResponse, ShareFetchResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::WireError;
use super::guard::check_response;
use super::header::response_header_len;
use super::reader::Reader;
use super::scan;
use super::versions;

/// What a response needs before it goes back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseAction {
    /// Forward the original bytes.
    Forward,
    /// Trim advertised API versions.
    ApiVersions,
    /// Rewrite broker addresses.
    Addresses(ApiKey),
    /// Rewrite addresses only if the top-level `node_endpoints` tag is present.
    NodeEndpoints(ApiKey),
}

impl ResponseAction {
    /// The action for the response to a request of `api_key` at `version`.
    pub fn for_request(api_key: i16, version: i16) -> Self {
        match ApiKey::try_from(api_key) {
            Ok(ApiKey::ApiVersions) => Self::ApiVersions,
            Ok(
                k @ (ApiKey::Metadata
                | ApiKey::FindCoordinator
                | ApiKey::DescribeCluster
                | ApiKey::ShareFetch
                | ApiKey::ShareAcknowledge),
            ) => Self::Addresses(k),
            Ok(ApiKey::Produce) if version >= 10 => Self::NodeEndpoints(ApiKey::Produce),
            Ok(ApiKey::Fetch) if version >= 16 => Self::NodeEndpoints(ApiKey::Fetch),
            _ => Self::Forward,
        }
    }
}

/// Why an address could not be advertised.
#[derive(Debug, thiserror::Error)]
#[error("cannot advertise broker {node_id} ({host}:{port}): {reason}")]
pub struct AdvertiseError {
    pub node_id: i32,
    pub host: String,
    pub port: i32,
    pub reason: String,
}

/// Maps an upstream broker (`node_id`, `host`, `port`) to the address clients must use.
pub trait AddressMap {
    fn advertise(&mut self, node_id: i32, host: &str, port: i32) -> Result<(StrBytes, i32), AdvertiseError>;
}

impl<F> AddressMap for F
where
    F: FnMut(i32, &str, i32) -> Result<(StrBytes, i32), AdvertiseError>,
{
    fn advertise(&mut self, node_id: i32, host: &str, port: i32) -> Result<(StrBytes, i32), AdvertiseError> {
        self(node_id, host, port)
    }
}

/// Errors of response rewriting.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error(transparent)]
    Advertise(#[from] AdvertiseError),
}

/// Applies `action` to a response `frame` (size prefix included). Returns the new frame, or
/// `None` when the original bytes must be forwarded as they are.
pub fn rewrite_response(
    action: ResponseAction,
    version: i16,
    frame: &Bytes,
    map: &mut impl AddressMap,
) -> Result<Option<Bytes>, RewriteError> {
    match action {
        ResponseAction::Forward => Ok(None),
        ResponseAction::ApiVersions => api_versions(version, frame),
        ResponseAction::Addresses(key) | ResponseAction::NodeEndpoints(key) => {
            if let ResponseAction::NodeEndpoints(_) = action {
                let hlen = response_header_len(key, version, frame.get(4..).unwrap_or_default())?;
                let body = &frame[4 + hlen..];
                let scanned = match key {
                    ApiKey::Produce => scan::produce_response(body, version, |_| {})?,
                    _ => scan::fetch_response(body, version, |_, _| {})?,
                };
                if !scanned.has_node_endpoints {
                    return Ok(None);
                }
            }
            addresses(key, version, frame, map)
        }
    }
}

/// Replaces broker addresses through an [`AddressMap`], remembering the first failure so that an
/// edit closure can go on and the caller can refuse the whole answer.
struct Swapper<'m, M> {
    map: &'m mut M,
    err: Option<AdvertiseError>,
}

impl<M: AddressMap> Swapper<'_, M> {
    fn swap(&mut self, node_id: i32, host: &mut StrBytes, port: &mut i32) {
        // A coordinator lookup that failed answers node -1 and an empty host: nothing to hide.
        if self.err.is_some() || (node_id < 0 && host.is_empty()) {
            return;
        }
        match self.map.advertise(node_id, host.as_str(), *port) {
            Ok((h, p)) => {
                *host = h;
                *port = p;
            }
            Err(e) => self.err = Some(e),
        }
    }

    fn finish(self, out: Bytes) -> Result<Bytes, RewriteError> {
        match self.err {
            Some(e) => Err(e.into()),
            None => Ok(out),
        }
    }
}

fn addresses(
    key: ApiKey,
    version: i16,
    frame: &Bytes,
    map: &mut impl AddressMap,
) -> Result<Option<Bytes>, RewriteError> {
    let mut s = Swapper { map, err: None };
    // The `node_endpoints` of the KIP-951 answers, each message with its own endpoint type.
    macro_rules! endpoints {
        ($t:ty, $api:literal) => {
            recode::<$t>($api, key, version, frame, |m| {
                for n in &mut m.node_endpoints {
                    s.swap(n.node_id.0, &mut n.host, &mut n.port);
                }
            })?
        };
    }
    let out = match key {
        ApiKey::Metadata => recode::<MetadataResponse>("Metadata", key, version, frame, |m| {
            for b in &mut m.brokers {
                s.swap(b.node_id.0, &mut b.host, &mut b.port);
            }
        })?,
        ApiKey::FindCoordinator => recode::<FindCoordinatorResponse>("FindCoordinator", key, version, frame, |m| {
            if version < 4 {
                s.swap(m.node_id.0, &mut m.host, &mut m.port);
            }
            for c in &mut m.coordinators {
                s.swap(c.node_id.0, &mut c.host, &mut c.port);
            }
        })?,
        ApiKey::DescribeCluster => recode::<DescribeClusterResponse>("DescribeCluster", key, version, frame, |m| {
            for b in &mut m.brokers {
                s.swap(b.broker_id.0, &mut b.host, &mut b.port);
            }
        })?,
        ApiKey::Produce => endpoints!(ProduceResponse, "Produce"),
        ApiKey::Fetch => endpoints!(FetchResponse, "Fetch"),
        ApiKey::ShareFetch => endpoints!(ShareFetchResponse, "ShareFetch"),
        ApiKey::ShareAcknowledge => endpoints!(ShareAcknowledgeResponse, "ShareAcknowledge"),
        _ => return Ok(None),
    };
    s.finish(out).map(Some)
}

/// Decodes a Produce response (v3+), lets `edit` change it, and encodes it again. Used when
/// eventgate merges its own partition errors into a broker's answer (addresses in it are the
/// addresses stage's, which sees the answer afterwards).
pub fn recode_produce_response(
    version: i16,
    frame: &Bytes,
    edit: impl FnOnce(&mut ProduceResponse),
) -> Result<Bytes, RewriteError> {
    Ok(recode::<ProduceResponse>("Produce", ApiKey::Produce, version, frame, edit)?)
}

fn api_versions(version: i16, frame: &Bytes) -> Result<Option<Bytes>, RewriteError> {
    // A broker that does not know the requested version answers in the v0 form with error
    // UNSUPPORTED_VERSION; the client retries, so such an answer is forwarded as it is.
    let error_code = Reader::new(frame.get(8..).unwrap_or_default()).i16("ApiVersions error code")?;
    if error_code == versions::UNSUPPORTED_VERSION {
        return Ok(None);
    }
    // Always re-encoded, even when the ranges need no trimming: encoding leaves out tagged fields
    // that hold their default values, as Apache Kafka does. Brokers that send them anyway (tansu)
    // break librdkafka before 2.1, whose tag parser mis-skips non-empty tagged fields.
    let out = recode::<ApiVersionsResponse>("ApiVersions", ApiKey::ApiVersions, version, frame, |m| {
        versions::intersect(m);
    })?;
    Ok(Some(out))
}

/// Decodes the body of a response frame as `T`, lets `edit` change it, and encodes the frame again,
/// keeping the original response header bytes.
fn recode<T: Decodable + Encodable>(
    api: &'static str,
    key: ApiKey,
    version: i16,
    frame: &Bytes,
    edit: impl FnOnce(&mut T),
) -> Result<Bytes, WireError> {
    let hlen = response_header_len(key, version, frame.get(4..).unwrap_or_default())?;
    let mut body = frame.slice(4 + hlen..);
    // kafka-protocol sizes its arrays by the counts on the wire: check them first.
    check_response(key, version, &body)?;
    let mut msg = T::decode(&mut body, version).map_err(|source| WireError::Decode { api, version, source })?;
    if !body.is_empty() {
        return Err(WireError::Malformed { what: api, why: "trailing bytes after the response body" });
    }
    edit(&mut msg);
    let size = msg.compute_size(version).map_err(|source| WireError::Encode { api, version, source })?;
    let mut out = BytesMut::with_capacity(4 + hlen + size);
    out.put_i32((hlen + size) as i32);
    out.put_slice(&frame[4..4 + hlen]);
    msg.encode(&mut out, version).map_err(|source| WireError::Encode { api, version, source })?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests;
