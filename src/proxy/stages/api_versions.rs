//! ApiVersions: a request newer than eventgate can decode is answered locally with
//! UNSUPPORTED_VERSION (the client then retries with an older version, as KIP-511 says), and the
//! broker's answer is trimmed to the API versions eventgate can read and rewrite, so a client never
//! picks a version whose answers eventgate could not follow.

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;

use crate::proxy::chain::{AnswerCtx, AnswerHook, Ctx, Flow, Request, Stage, StageError};
use crate::wire::rewrite::{ResponseAction, rewrite_response};
use crate::wire::versions;

pub struct ApiVersions;

impl Stage for ApiVersions {
    fn name(&self) -> &'static str {
        "api_versions"
    }

    fn wants(&self, api_key: i16, _: i16) -> bool {
        api_key == ApiKey::ApiVersions as i16
    }

    fn on_request(&self, _: &Ctx<'_>, req: &mut Request) -> Result<Flow, StageError> {
        if req.meta.api_version > versions::API_VERSIONS_MAX {
            return Ok(Flow::Answer(versions::unsupported_version_frame(req.meta.correlation_id)));
        }
        req.on_answer(Trim);
        Ok(Flow::Next)
    }
}

/// Trims the versions the broker offers to what eventgate supports.
struct Trim;

impl AnswerHook for Trim {
    fn stage(&self) -> &'static str {
        "api_versions"
    }

    fn on_answer(self: Box<Self>, cx: &AnswerCtx<'_>, answer: Bytes) -> Result<Option<Bytes>, StageError> {
        let mut no_addresses = |id, host: &str, port| {
            Err(crate::wire::rewrite::AdvertiseError {
                node_id: id,
                host: host.to_owned(),
                port,
                reason: "ApiVersions answers carry no addresses".into(),
            })
        };
        let new = rewrite_response(ResponseAction::ApiVersions, cx.api_version, &answer, &mut no_addresses)?;
        Ok(cx.rewritten(answer, new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::stages::testing::{answer_through, request_through};

    #[tokio::test]
    async fn a_version_newer_than_eventgate_reads_is_answered_locally() {
        // kafka-protocol cannot encode a version it does not know: a v0 frame, its version patched.
        let v0 = crate::proxy::stages::testing::request(
            ApiKey::ApiVersions,
            0,
            7,
            &kafka_protocol::messages::ApiVersionsRequest::default(),
        );
        let mut frame = v0.to_vec();
        frame[6..8].copy_from_slice(&99i16.to_be_bytes());
        let frame = Bytes::from(frame);
        match request_through(&ApiVersions, frame) {
            (Flow::Answer(bytes), _) => {
                assert_eq!(bytes, versions::unsupported_version_frame(7));
            }
            (other, _) => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_broker_s_versions_are_trimmed_to_what_eventgate_reads() {
        use kafka_protocol::messages::ApiVersionsResponse;
        use kafka_protocol::messages::api_versions_response::ApiVersion;
        let frame = crate::proxy::stages::testing::request(
            ApiKey::ApiVersions,
            3,
            1,
            &kafka_protocol::messages::ApiVersionsRequest::default(),
        );
        let (flow, req) = request_through(&ApiVersions, frame);
        assert!(matches!(flow, Flow::Next));
        let mut resp = ApiVersionsResponse::default();
        resp.api_keys.push(ApiVersion::default().with_api_key(ApiKey::Produce as i16).with_max_version(99));
        let answer = crate::proxy::stages::testing::response_frame(ApiKey::ApiVersions, 3, 1, &resp);
        let out = answer_through(req, answer).expect("answered").expect("an answer");
        let trimmed =
            crate::proxy::stages::testing::decode_response::<ApiVersionsResponse>(ApiKey::ApiVersions, 3, &out);
        let produce = trimmed.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).expect("produce");
        assert!(produce.max_version < 99 && produce.max_version >= 9, "{}", produce.max_version);
    }
}
