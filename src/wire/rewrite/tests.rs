use std::collections::HashMap;

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::fetch_response::{
    FetchableTopicResponse, NodeEndpoint as FetchNodeEndpoint, PartitionData,
};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{MetadataResponseBroker, MetadataResponseTopic};
use kafka_protocol::messages::produce_response::{
    NodeEndpoint as ProduceNodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{BrokerId, ResponseHeader, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use super::*;

/// The eventgate side of a three-broker cluster: node n is advertised at eventgate:(19000 + n).
fn cluster_map() -> impl FnMut(i32, &str, i32) -> Result<(StrBytes, i32), AdvertiseError> {
    let known: HashMap<i32, (&str, i32)> =
        [(1, ("kafka-1.internal", 9092)), (2, ("kafka-2.internal", 9092)), (3, ("kafka-3.internal", 9093))]
            .into_iter()
            .collect();
    move |node_id, host, port| {
        assert_eq!(known.get(&node_id), Some(&(host, port)), "unexpected broker {node_id} {host}:{port}");
        Ok((StrBytes::from_static_str("eventgate"), 19000 + node_id))
    }
}

fn frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Bytes {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let hv = key.response_header_version(version);
    let mut b = BytesMut::new();
    b.put_i32(0);
    header.encode(&mut b, hv).unwrap();
    body.encode(&mut b, version).unwrap();
    let len = (b.len() - 4) as i32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b.freeze()
}

fn decode<T: Decodable>(key: ApiKey, version: i16, frame: &Bytes) -> (i32, T) {
    let mut body = frame.slice(4..);
    let header = ResponseHeader::decode(&mut body, key.response_header_version(version)).unwrap();
    let msg = T::decode(&mut body, version).unwrap();
    assert!(body.is_empty());
    assert_eq!(i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize, frame.len() - 4);
    (header.correlation_id, msg)
}

fn broker(id: i32, host: &'static str, port: i32) -> MetadataResponseBroker {
    MetadataResponseBroker::default()
        .with_node_id(BrokerId(id))
        .with_host(StrBytes::from_static_str(host))
        .with_port(port)
}

/// Every truncation of a frame is an error, never a panic.
fn assert_truncations_fail(action: ResponseAction, version: i16, frame: &Bytes) {
    for cut in 4..frame.len() {
        let mut short = BytesMut::from(&frame[..cut]);
        let len = (cut - 4) as i32;
        short[..4].copy_from_slice(&len.to_be_bytes());
        let short = short.freeze();
        let res = rewrite_response(action, version, &short, &mut cluster_map());
        assert!(res.is_err(), "v{version} cut at {cut} of {} was accepted", frame.len());
    }
}

#[test]
fn metadata_three_brokers_every_version() {
    for version in MetadataResponse::VERSIONS.min..=MetadataResponse::VERSIONS.max {
        let mut resp = MetadataResponse::default().with_brokers(vec![
            broker(1, "kafka-1.internal", 9092),
            broker(2, "kafka-2.internal", 9092),
            broker(3, "kafka-3.internal", 9093),
        ]);
        if version >= 1 {
            resp.controller_id = BrokerId(2);
        }
        resp.topics = vec![
            MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("orders"))))
                .with_partitions(vec![Default::default()]),
        ];
        let f = frame(ApiKey::Metadata, version, 7, &resp);
        let action = ResponseAction::for_request(ApiKey::Metadata as i16, version);
        let out = rewrite_response(action, version, &f, &mut cluster_map()).unwrap().unwrap();
        let (cid, got) = decode::<MetadataResponse>(ApiKey::Metadata, version, &out);
        assert_eq!(cid, 7);
        let addrs: Vec<_> = got.brokers.iter().map(|b| (b.node_id.0, b.host.to_string(), b.port)).collect();
        assert_eq!(
            addrs,
            vec![(1, "eventgate".into(), 19001), (2, "eventgate".into(), 19002), (3, "eventgate".into(), 19003)],
            "v{version}"
        );
        // Everything but the addresses is as the broker sent it.
        let mut expected = resp.clone();
        for b in &mut expected.brokers {
            b.host = StrBytes::from_static_str("eventgate");
            b.port = 19000 + b.node_id.0;
        }
        assert_eq!(got, expected, "v{version}");
        assert_truncations_fail(action, version, &f);
    }
}

#[test]
fn find_coordinator_every_version_including_batched() {
    for version in FindCoordinatorResponse::VERSIONS.min..=FindCoordinatorResponse::VERSIONS.max {
        let resp = if version < 4 {
            FindCoordinatorResponse::default()
                .with_node_id(BrokerId(2))
                .with_host(StrBytes::from_static_str("kafka-2.internal"))
                .with_port(9092)
        } else {
            FindCoordinatorResponse::default().with_coordinators(vec![
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("group-a"))
                    .with_node_id(BrokerId(3))
                    .with_host(StrBytes::from_static_str("kafka-3.internal"))
                    .with_port(9093),
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("group-b"))
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("kafka-1.internal"))
                    .with_port(9092),
                // A coordinator that is not available yet: nothing to rewrite.
                Coordinator::default()
                    .with_key(StrBytes::from_static_str("group-c"))
                    .with_node_id(BrokerId(-1))
                    .with_error_code(15),
            ])
        };
        let f = frame(ApiKey::FindCoordinator, version, 9, &resp);
        let action = ResponseAction::for_request(ApiKey::FindCoordinator as i16, version);
        let out = rewrite_response(action, version, &f, &mut cluster_map()).unwrap().unwrap();
        let (_, got) = decode::<FindCoordinatorResponse>(ApiKey::FindCoordinator, version, &out);
        if version < 4 {
            assert_eq!((got.host.as_str(), got.port), ("eventgate", 19002), "v{version}");
        } else {
            let addrs: Vec<_> = got.coordinators.iter().map(|c| (c.host.to_string(), c.port)).collect();
            assert_eq!(
                addrs,
                vec![("eventgate".into(), 19003), ("eventgate".into(), 19001), ("".into(), 0)],
                "v{version}"
            );
        }
        assert_truncations_fail(action, version, &f);
    }
}

#[test]
fn describe_cluster_every_version() {
    for version in DescribeClusterResponse::VERSIONS.min..=DescribeClusterResponse::VERSIONS.max {
        let resp = DescribeClusterResponse::default().with_cluster_id(StrBytes::from_static_str("c1")).with_brokers(
            [(1, "kafka-1.internal", 9092), (3, "kafka-3.internal", 9093)]
                .into_iter()
                .map(|(id, h, p)| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(id))
                        .with_host(StrBytes::from_static_str(h))
                        .with_port(p)
                })
                .collect(),
        );
        let f = frame(ApiKey::DescribeCluster, version, 1, &resp);
        let action = ResponseAction::for_request(ApiKey::DescribeCluster as i16, version);
        let out = rewrite_response(action, version, &f, &mut cluster_map()).unwrap().unwrap();
        let (_, got) = decode::<DescribeClusterResponse>(ApiKey::DescribeCluster, version, &out);
        let ports: Vec<_> = got.brokers.iter().map(|b| b.port).collect();
        assert_eq!(ports, vec![19001, 19003], "v{version}");
        assert!(got.brokers.iter().all(|b| b.host.as_str() == "eventgate"));
        assert_truncations_fail(action, version, &f);
    }
}

fn produce_response(with_endpoints: bool) -> ProduceResponse {
    let mut resp = ProduceResponse::default().with_responses(vec![
        TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("orders")))
            .with_partition_responses(vec![PartitionProduceResponse::default().with_index(0).with_base_offset(41)]),
    ]);
    if with_endpoints {
        resp.node_endpoints = vec![
            ProduceNodeEndpoint::default()
                .with_node_id(BrokerId(3))
                .with_host(StrBytes::from_static_str("kafka-3.internal"))
                .with_port(9093),
        ];
    }
    resp
}

#[test]
fn produce_node_endpoints_are_rewritten_and_plain_responses_forwarded() {
    for version in 10..=12 {
        let action = ResponseAction::for_request(ApiKey::Produce as i16, version);
        assert_eq!(action, ResponseAction::NodeEndpoints(ApiKey::Produce));
        let plain = frame(ApiKey::Produce, version, 3, &produce_response(false));
        assert!(rewrite_response(action, version, &plain, &mut cluster_map()).unwrap().is_none());
        let moved = frame(ApiKey::Produce, version, 3, &produce_response(true));
        let out = rewrite_response(action, version, &moved, &mut cluster_map()).unwrap().unwrap();
        let (_, got) = decode::<ProduceResponse>(ApiKey::Produce, version, &out);
        assert_eq!(got.node_endpoints[0].port, 19003);
        assert_eq!(got.responses, produce_response(true).responses);
        assert_truncations_fail(action, version, &moved);
        assert_truncations_fail(action, version, &plain);
    }
    assert_eq!(ResponseAction::for_request(ApiKey::Produce as i16, 9), ResponseAction::Forward);
}

fn fetch_response(version: i16, with_endpoints: bool) -> FetchResponse {
    let mut topic = FetchableTopicResponse::default().with_partitions(vec![
        PartitionData::default()
            .with_partition_index(0)
            .with_records(Some(Bytes::from_static(b"opaque record batch bytes")))
            .with_aborted_transactions(Some(vec![Default::default()])),
    ]);
    if version < 13 {
        topic.topic = TopicName(StrBytes::from_static_str("orders"));
    }
    let mut resp = FetchResponse::default().with_responses(vec![topic]);
    if with_endpoints {
        resp.node_endpoints = vec![
            FetchNodeEndpoint::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("kafka-1.internal"))
                .with_port(9092),
        ];
    }
    resp
}

#[test]
fn fetch_node_endpoints_are_rewritten_and_plain_responses_forwarded() {
    for version in 16..=FetchResponse::VERSIONS.max {
        let action = ResponseAction::for_request(ApiKey::Fetch as i16, version);
        let plain = frame(ApiKey::Fetch, version, 5, &fetch_response(version, false));
        assert!(rewrite_response(action, version, &plain, &mut cluster_map()).unwrap().is_none());
        let moved = frame(ApiKey::Fetch, version, 5, &fetch_response(version, true));
        let out = rewrite_response(action, version, &moved, &mut cluster_map()).unwrap().unwrap();
        let (_, got) = decode::<FetchResponse>(ApiKey::Fetch, version, &out);
        assert_eq!((got.node_endpoints[0].host.as_str(), got.node_endpoints[0].port), ("eventgate", 19001));
        assert_eq!(got.responses, fetch_response(version, true).responses);
        assert_truncations_fail(action, version, &moved);
    }
    assert_eq!(ResponseAction::for_request(ApiKey::Fetch as i16, 15), ResponseAction::Forward);
}

#[test]
fn share_fetch_and_acknowledge_endpoints_are_rewritten() {
    use kafka_protocol::messages::share_acknowledge_response::NodeEndpoint as AckEndpoint;
    use kafka_protocol::messages::share_fetch_response::NodeEndpoint as ShareEndpoint;
    let resp = ShareFetchResponse::default().with_node_endpoints(vec![
        ShareEndpoint::default()
            .with_node_id(BrokerId(2))
            .with_host(StrBytes::from_static_str("kafka-2.internal"))
            .with_port(9092),
    ]);
    let f = frame(ApiKey::ShareFetch, 1, 1, &resp);
    let action = ResponseAction::for_request(ApiKey::ShareFetch as i16, 1);
    let out = rewrite_response(action, 1, &f, &mut cluster_map()).unwrap().unwrap();
    let (_, got) = decode::<ShareFetchResponse>(ApiKey::ShareFetch, 1, &out);
    assert_eq!(got.node_endpoints[0].port, 19002);

    let resp = ShareAcknowledgeResponse::default().with_node_endpoints(vec![
        AckEndpoint::default()
            .with_node_id(BrokerId(1))
            .with_host(StrBytes::from_static_str("kafka-1.internal"))
            .with_port(9092),
    ]);
    let f = frame(ApiKey::ShareAcknowledge, 1, 1, &resp);
    let action = ResponseAction::for_request(ApiKey::ShareAcknowledge as i16, 1);
    let out = rewrite_response(action, 1, &f, &mut cluster_map()).unwrap().unwrap();
    let (_, got) = decode::<ShareAcknowledgeResponse>(ApiKey::ShareAcknowledge, 1, &out);
    assert_eq!(got.node_endpoints[0].port, 19001);
}

#[test]
fn api_versions_response_is_trimmed_every_version() {
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    for version in 0..=versions::API_VERSIONS_MAX {
        let resp = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default().with_api_key(0).with_min_version(0).with_max_version(13),
            ApiVersion::default().with_api_key(19).with_min_version(0).with_max_version(7),
        ]);
        let f = frame(ApiKey::ApiVersions, version, 2, &resp);
        let out = rewrite_response(ResponseAction::ApiVersions, version, &f, &mut cluster_map()).unwrap().unwrap();
        let (cid, got) = decode::<ApiVersionsResponse>(ApiKey::ApiVersions, version, &out);
        assert_eq!(cid, 2);
        assert_eq!(got.api_keys[0].max_version, 12);
        assert_eq!(got.api_keys[1].max_version, 7);
    }
}

#[test]
fn advertise_failure_is_an_error_not_a_leak() {
    let resp = MetadataResponse::default().with_brokers(vec![broker(1, "kafka-1.internal", 9092)]);
    let f = frame(ApiKey::Metadata, 12, 1, &resp);
    let mut failing = |node_id: i32, host: &str, port: i32| -> Result<(StrBytes, i32), AdvertiseError> {
        Err(AdvertiseError { node_id, host: host.into(), port, reason: "no port".into() })
    };
    let res = rewrite_response(ResponseAction::Addresses(ApiKey::Metadata), 12, &f, &mut failing);
    assert!(matches!(res, Err(RewriteError::Advertise(_))));
}

#[test]
fn scanners_accept_many_minimal_partitions() {
    // Minimal partitions are exactly as long as the bound the scanners check counts against.
    for version in 16..=FetchResponse::VERSIONS.max {
        let topic = FetchableTopicResponse::default()
            .with_partitions((0..5).map(|i| PartitionData::default().with_partition_index(i)).collect());
        let resp = FetchResponse::default().with_responses(vec![topic.clone(), topic]);
        let f = frame(ApiKey::Fetch, version, 1, &resp);
        let action = ResponseAction::for_request(ApiKey::Fetch as i16, version);
        assert!(rewrite_response(action, version, &f, &mut cluster_map()).unwrap().is_none());
    }
    for version in 10..=12 {
        let topic = TopicProduceResponse::default()
            .with_name(TopicName(StrBytes::from_static_str("t")))
            .with_partition_responses((0..5).map(|i| PartitionProduceResponse::default().with_index(i)).collect());
        let resp = ProduceResponse::default().with_responses(vec![topic.clone(), topic]);
        let f = frame(ApiKey::Produce, version, 1, &resp);
        let action = ResponseAction::for_request(ApiKey::Produce as i16, version);
        assert!(rewrite_response(action, version, &f, &mut cluster_map()).unwrap().is_none());
    }
}

/// tansu 0.6.0's answer to ApiVersions v3, captured off the wire: it writes every tagged field
/// even at its default value, which librdkafka < 2.1 cannot skip. Re-encoding drops them.
const TANSU_API_VERSIONS_V3: &str = "0000000700002400190000000400001600000005000020000000040000000000000b00000f0000000500000a0000000600003c0000000100002e00000000000012000000040000470000000000002a00000002000024000000020000330000000000000c000000040000100000000500001500000002000011000000010000090000000900001c00000004000001000000110000450000000000000e000000050000320000000000000b000000090000020000000900002c0000000100004b0000000000001e0000000300001d000000030000030000000c000018000000050000140000000600000d0000000500001300000007000008000000090000000000040001010108ffffffffffffffff020101030100";

#[test]
fn api_versions_default_tagged_fields_are_dropped() {
    let body: Vec<u8> = (0..TANSU_API_VERSIONS_V3.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&TANSU_API_VERSIONS_V3[i..i + 2], 16).unwrap())
        .collect();
    let mut f = BytesMut::new();
    f.put_i32(body.len() as i32);
    f.put_slice(&body);
    let f = f.freeze();
    let out = rewrite_response(ResponseAction::ApiVersions, 3, &f, &mut cluster_map()).unwrap().unwrap();
    // Same api keys, and the top-level tagged-field section is now empty (a single 0 byte).
    let (_, before) = decode::<ApiVersionsResponse>(ApiKey::ApiVersions, 3, &f);
    let (_, after) = decode::<ApiVersionsResponse>(ApiKey::ApiVersions, 3, &out);
    assert_eq!(before, after);
    assert_eq!(out.last(), Some(&0));
    assert_eq!(f.len() - out.len(), 19, "4 default tagged fields of 19 bytes in all are left out");
}

#[test]
fn empty_node_endpoints_need_no_rewrite() {
    // tansu puts an empty node_endpoints array (tag 0, value 0x01) in every Fetch answer.
    for version in 16..=FetchResponse::VERSIONS.max {
        let f = frame(ApiKey::Fetch, version, 1, &fetch_response(version, false));
        let mut with_empty = BytesMut::from(&f[..f.len() - 1]);
        with_empty.put_slice(&[1, 0, 1, 1]);
        let len = (with_empty.len() - 4) as i32;
        with_empty[..4].copy_from_slice(&len.to_be_bytes());
        let action = ResponseAction::for_request(ApiKey::Fetch as i16, version);
        let out = rewrite_response(action, version, &with_empty.freeze(), &mut cluster_map()).unwrap();
        assert!(out.is_none(), "v{version}");
    }
}

/// Found by `fuzz/fuzz_targets/response.rs`: a Metadata v0 answer of five bytes whose brokers count
/// is 0x73001000 made kafka-protocol reserve ~200 GB and abort the process.
#[test]
fn fuzzed_metadata_with_a_huge_broker_count_is_an_error_not_an_abort() {
    let data: &[u8] = &[3, 0, 0, 1, 0, 16, 115, 0, 16, 0, 0];
    // As the fuzz target does: two bytes pick the API and version, the rest is the frame body.
    let (key, version) = (i16::from(data[0] % 80), i16::from(data[1] % 20));
    let body = &data[2..];
    let mut f = BytesMut::new();
    f.put_i32(body.len() as i32);
    f.put_slice(body);
    let action = ResponseAction::for_request(key, version);
    assert_eq!(action, ResponseAction::Addresses(ApiKey::Metadata));
    let res = rewrite_response(action, version, &f.freeze(), &mut cluster_map());
    assert!(matches!(res, Err(RewriteError::Wire(_))), "{res:?}");
}
