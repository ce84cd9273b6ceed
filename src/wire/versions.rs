//! The API versions eventgate can decode, and the `ApiVersions` exchange that enforces them.
//!
//! A client picks, for every API, the highest version both it and the broker support. If the broker
//! supports a version of an API that eventgate must inspect but cannot decode, a new client would pick
//! it and the proxy would choke on the response. So eventgate trims the broker's `ApiVersions`
//! response to [`INSPECTED`]; APIs it never inspects keep the broker's range, and API keys it does not
//! know at all pass through untouched.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// `UNSUPPORTED_VERSION`.
pub const UNSUPPORTED_VERSION: i16 = 35;

/// The highest `ApiVersions` request version eventgate understands.
pub const API_VERSIONS_MAX: i16 = 4;

/// The version ranges eventgate can handle for the APIs whose messages it inspects or rewrites.
///
/// * `Produce` keeps minimum 0: v0–v2 requests are walked by eventgate's own reader, and some
///   librdkafka releases disable compression when a broker's minimum is above 0. The maximum is 12
///   because v13 names topics by id only.
/// * `Fetch` v0–v15 responses carry no broker addresses and pass untouched; v16–v18 are scanned.
pub const INSPECTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 0, 12),
    (ApiKey::Fetch, 0, 18),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::ApiVersions, 0, API_VERSIONS_MAX),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::ShareFetch, 1, 1),
    (ApiKey::ShareAcknowledge, 1, 1),
];

/// The range eventgate supports for `api_key`, if it inspects that API.
pub fn supported(api_key: i16) -> Option<(i16, i16)> {
    INSPECTED.iter().find(|(k, _, _)| *k as i16 == api_key).map(|&(_, min, max)| (min, max))
}

/// Trims the broker's advertised ranges to what eventgate can handle. Returns whether anything
/// changed. An inspected API whose ranges do not overlap at all is removed, so clients never use it.
pub fn intersect(resp: &mut ApiVersionsResponse) -> bool {
    let before = resp.api_keys.len();
    let mut changed = false;
    resp.api_keys.retain_mut(|v| {
        let Some((min, max)) = supported(v.api_key) else {
            return true;
        };
        let (new_min, new_max) = (v.min_version.max(min), v.max_version.min(max));
        changed |= (new_min, new_max) != (v.min_version, v.max_version);
        v.min_version = new_min;
        v.max_version = new_max;
        new_min <= new_max
    });
    changed || resp.api_keys.len() != before
}

/// The response a broker gives to an `ApiVersions` request newer than it knows: error
/// `UNSUPPORTED_VERSION` in the v0 body format, listing the `ApiVersions` versions it does support,
/// so the client retries with one of them. Returned as a whole frame.
pub fn unsupported_version_frame(correlation_id: i32) -> Bytes {
    let mut b = BytesMut::with_capacity(4 + 4 + 2 + 4 + 6);
    b.put_i32(4 + 2 + 4 + 6);
    b.put_i32(correlation_id);
    b.put_i16(UNSUPPORTED_VERSION);
    b.put_i32(1);
    b.put_i16(ApiKey::ApiVersions as i16);
    b.put_i16(0);
    b.put_i16(API_VERSIONS_MAX);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::protocol::Decodable;

    use super::*;

    fn v(key: i16, min: i16, max: i16) -> ApiVersion {
        ApiVersion::default().with_api_key(key).with_min_version(min).with_max_version(max)
    }

    #[test]
    fn trims_inspected_apis_and_leaves_others() {
        let mut resp = ApiVersionsResponse::default().with_api_keys(vec![
            v(0, 0, 13),   // Produce: capped at 12, min 0 kept
            v(3, 0, 99),   // Metadata: capped
            v(10, 0, 9),   // FindCoordinator: capped at 6
            v(19, 0, 7),   // CreateTopics: not inspected
            v(9999, 1, 2), // unknown key: untouched
            v(78, 0, 0),   // ShareFetch v0 only: no overlap, removed
        ]);
        assert!(intersect(&mut resp));
        let got: Vec<_> = resp.api_keys.iter().map(|a| (a.api_key, a.min_version, a.max_version)).collect();
        assert_eq!(got, vec![(0, 0, 12), (3, 0, 13), (10, 0, 6), (19, 0, 7), (9999, 1, 2)]);
    }

    #[test]
    fn unchanged_when_broker_is_within_range() {
        let mut resp = ApiVersionsResponse::default().with_api_keys(vec![v(0, 0, 9), v(3, 1, 12)]);
        assert!(!intersect(&mut resp));
    }

    #[test]
    fn unsupported_version_answer_is_a_v0_api_versions_response() {
        let f = unsupported_version_frame(77);
        assert_eq!(i32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
        assert_eq!(i32::from_be_bytes(f[4..8].try_into().unwrap()), 77);
        let mut body = f.slice(8..);
        let resp = ApiVersionsResponse::decode(&mut body, 0).unwrap();
        assert_eq!(resp.error_code, UNSUPPORTED_VERSION);
        assert_eq!(resp.api_keys.len(), 1);
        assert_eq!(resp.api_keys[0].max_version, API_VERSIONS_MAX);
    }
}
