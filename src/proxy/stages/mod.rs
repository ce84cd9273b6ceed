//! The behaviours eventgate adds to the Kafka protocol, one stage per file (see [`super::chain`]
//! for the contract), and the one place they are put in order.

pub mod acks_zero;
pub mod addresses;
pub mod api_versions;
pub mod identity;
pub mod mirror_tap;
pub mod produce;
pub mod traffic;

use super::chain::{Chain, Stage};

/// The chain every connection runs, in request order (answers come back in reverse). To add a
/// behaviour: write a stage in a file of its own here, and add one line below.
pub fn standard() -> Chain {
    let stages: Vec<Box<dyn Stage>> = vec![
        // Outermost: the answers a client sees last are trimmed and rewritten after every inner
        // stage has had its say.
        Box::new(api_versions::ApiVersions),
        // Who is producing is known before any inner stage sees the request.
        Box::new(identity::Identity),
        Box::new(addresses::Addresses),
        Box::new(produce::Validate),
        // Counts what the broker accepts of what the produce stage let through.
        Box::new(traffic::Traffic),
        Box::new(acks_zero::AcksZero),
        // Innermost: sees the broker's answer first, as the broker sent it.
        Box::new(mirror_tap::MirrorTap),
    ];
    Chain::new(stages)
}

/// What the stages' unit tests share: a gateway that opens no sockets until an answer names a
/// broker, frames built with `kafka-protocol`, and a scripted answer run through a request's hooks.
#[cfg(test)]
pub mod testing {
    use std::sync::Arc;

    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
    use kafka_protocol::protocol::{Decodable, Encodable};

    use crate::proxy::Gateway;
    use crate::proxy::chain::{AnswerCtx, Ctx, Failed, Flow, Request, Session, Stage};
    use crate::wire::header::RequestMeta;

    /// The listener port of broker 111 in this thread's [`gateway`].
    pub fn node_port() -> u16 {
        gateway().config.node_ports.get(&111).copied().expect("broker 111 has a port")
    }

    /// One gateway per test thread (so tests running at once never share ports), with broker 111
    /// given a port that was free a moment ago.
    pub fn gateway() -> Arc<Gateway> {
        thread_local! {
            static GW: std::cell::OnceCell<Arc<Gateway>> = const { std::cell::OnceCell::new() };
        }
        GW.with(|g| g.get_or_init(|| gateway_with(None)).clone())
    }

    /// A gateway of its own, with `mirror` (and broker 111 given a port that was free a moment ago).
    pub fn gateway_with(mirror: Option<Arc<crate::mirror::Mirror>>) -> Arc<Gateway> {
        let mut config = crate::config::Settings::default().resolve().expect("default settings resolve");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        config.node_ports.insert(111, port);
        let validation = Arc::new(crate::validate::Validation::new(crate::validate::Policies::default()));
        Gateway::new(config, validation, mirror)
    }

    /// A request frame as a client sends it.
    pub fn request(key: ApiKey, version: i16, correlation_id: i32, body: &impl Encodable) -> Bytes {
        crate::wire::header::request_frame(key, version, correlation_id, "test", body).expect("encodes").freeze()
    }

    /// An answer frame as a broker sends it.
    pub fn response_frame(key: ApiKey, version: i16, correlation_id: i32, body: &impl Encodable) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i32(0);
        ResponseHeader::default()
            .with_correlation_id(correlation_id)
            .encode(&mut b, key.response_header_version(version))
            .expect("header encodes");
        body.encode(&mut b, version).expect("body encodes");
        let len = (b.len() - 4) as i32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b.freeze()
    }

    pub fn decode_response<T: Decodable>(key: ApiKey, version: i16, frame: &Bytes) -> T {
        let mut body = frame.slice(4..);
        ResponseHeader::decode(&mut body, key.response_header_version(version)).expect("header decodes");
        T::decode(&mut body, version).expect("body decodes")
    }

    pub fn decode_request<T: Decodable>(frame: &Bytes) -> T {
        let meta = RequestMeta::peek(frame).expect("header");
        let key = meta.key().expect("known key");
        let mut body = frame.slice(4..);
        RequestHeader::decode(&mut body, key.request_header_version(meta.api_version)).expect("header decodes");
        T::decode(&mut body, meta.api_version).expect("body decodes")
    }

    /// Runs `frame` through one stage, after `prepare` (notes earlier stages would have left).
    pub fn request_through_with(
        stage: &dyn Stage,
        frame: Bytes,
        prepare: impl FnOnce(&mut Request),
    ) -> (Flow, Request) {
        let gw = gateway();
        let session = Session::new("127.0.0.1:1".parse().expect("address"));
        let cx = Ctx { gw: &gw, session: &session };
        let meta = RequestMeta::peek(&frame).expect("header");
        assert!(stage.wants(meta.api_key, meta.api_version), "{} does not want this request", stage.name());
        let mut req = Request::new(meta, frame);
        prepare(&mut req);
        let flow = stage.on_request(&cx, &mut req).expect("the stage takes the request");
        (flow, req)
    }

    pub fn request_through(stage: &dyn Stage, frame: Bytes) -> (Flow, Request) {
        request_through_with(stage, frame, |_| {})
    }

    /// Runs a scripted broker answer through the hooks the request collected.
    pub fn answer_through(req: Request, answer: Bytes) -> Result<Option<Bytes>, Failed> {
        let gw = gateway();
        let session = Session::new("127.0.0.1:1".parse().expect("address"));
        let cx = AnswerCtx { gw: &gw, session: &session, api_key: req.meta.api_key, api_version: req.meta.api_version };
        crate::proxy::chain::answer(&cx, req.into_hooks(), answer)
    }
}
