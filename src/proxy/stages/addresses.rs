//! Broker addresses: every host and port an answer names (Metadata, FindCoordinator,
//! DescribeCluster, ShareFetch, ShareAcknowledge, and the KIP-951 `node_endpoints` of Produce v10+
//! and Fetch v16+ answers) is replaced by the eventgate listener of that broker, opened on first
//! sight ([`crate::proxy::Gateway::advertise`]). Which answers carry addresses is the wire layer's
//! table ([`ResponseAction::for_request`]); Produce and Fetch answers are scanned in place and
//! decoded only when they do carry endpoints. An address that cannot be mapped closes the
//! connection: a broker's own address never reaches a client.

use bytes::Bytes;

use crate::proxy::chain::{AnswerCtx, AnswerHook, Ctx, Flow, Request, Stage, StageError};
use crate::wire::rewrite::{ResponseAction, rewrite_response};

pub struct Addresses;

fn action(api_key: i16, api_version: i16) -> ResponseAction {
    match ResponseAction::for_request(api_key, api_version) {
        a @ (ResponseAction::Addresses(_) | ResponseAction::NodeEndpoints(_)) => a,
        _ => ResponseAction::Forward,
    }
}

impl Stage for Addresses {
    fn name(&self) -> &'static str {
        "addresses"
    }

    fn wants(&self, api_key: i16, api_version: i16) -> bool {
        action(api_key, api_version) != ResponseAction::Forward
    }

    fn on_request(&self, _: &Ctx<'_>, req: &mut Request) -> Result<Flow, StageError> {
        req.on_answer(Rewrite);
        Ok(Flow::Next)
    }
}

/// Rewrites the addresses of one answer (a zero-sized hook: registering it allocates nothing).
struct Rewrite;

impl AnswerHook for Rewrite {
    fn stage(&self) -> &'static str {
        "addresses"
    }

    fn on_answer(self: Box<Self>, cx: &AnswerCtx<'_>, answer: Bytes) -> Result<Option<Bytes>, StageError> {
        let mut map = |id: i32, host: &str, port: i32| cx.gw.advertise(id, host, port);
        let new = rewrite_response(action(cx.api_key, cx.api_version), cx.api_version, &answer, &mut map)?;
        Ok(cx.rewritten(answer, new))
    }
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
    use kafka_protocol::messages::{ApiKey, BrokerId, MetadataResponse};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::proxy::stages::testing::{answer_through, decode_response, request, request_through, response_frame};

    #[test]
    fn wants_the_answers_that_carry_addresses_and_no_others() {
        let s = Addresses;
        assert!(s.wants(ApiKey::Metadata as i16, 12));
        assert!(s.wants(ApiKey::FindCoordinator as i16, 4));
        assert!(s.wants(ApiKey::DescribeCluster as i16, 0));
        assert!(s.wants(ApiKey::Produce as i16, 10));
        assert!(!s.wants(ApiKey::Produce as i16, 9));
        assert!(s.wants(ApiKey::Fetch as i16, 16));
        assert!(!s.wants(ApiKey::Fetch as i16, 15));
        assert!(!s.wants(ApiKey::ListOffsets as i16, 7));
    }

    #[tokio::test]
    async fn metadata_names_eventgate_s_listeners_instead_of_the_brokers() {
        let (flow, req) = request_through(
            &Addresses,
            request(ApiKey::Metadata, 12, 5, &kafka_protocol::messages::MetadataRequest::default()),
        );
        assert!(matches!(flow, Flow::Next));
        let mut resp = MetadataResponse::default();
        // Node 111 has a fixed port in the test gateway (see `testing::gateway`).
        resp.brokers.push(
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(111))
                .with_host(StrBytes::from_static_str("broker.internal"))
                .with_port(9092),
        );
        let out = answer_through(req, response_frame(ApiKey::Metadata, 12, 5, &resp)).unwrap().unwrap();
        let seen = decode_response::<MetadataResponse>(ApiKey::Metadata, 12, &out);
        assert_eq!(seen.brokers[0].host.as_str(), "127.0.0.1");
        assert_eq!(seen.brokers[0].port, i32::from(crate::proxy::stages::testing::node_port()));
    }
}
