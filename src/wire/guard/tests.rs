use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::{ApiVersion, FinalizedFeatureKey, SupportedFeatureKey};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, DescribeClusterResponse, FetchResponse, FindCoordinatorResponse, MetadataResponse,
    ProduceResponse, ProducerId, ShareAcknowledgeResponse, ShareFetchResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, Message, StrBytes};

use super::*;

fn s(v: &'static str) -> StrBytes {
    StrBytes::from_static_str(v)
}

fn encode<T: Encodable>(msg: &T, version: i16) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    msg.encode(&mut b, version).unwrap_or_else(|e| panic!("encode v{version}: {e}"));
    b.to_vec()
}

/// Where the walk accepts `body` and the decoder does too, both read the same bytes.
fn agrees<T: Decodable>(key: ApiKey, version: i16, body: &[u8]) {
    if let Ok(walked) = walk(key, version, body) {
        let mut buf = Bytes::copy_from_slice(body);
        if T::decode(&mut buf, version).is_ok() {
            assert_eq!(walked, body.len() - buf.len(), "{key:?} v{version}: walk and decoder disagree on {body:02x?}");
        }
    }
}

/// A well-formed message is accepted and walked to its end; every truncation and every one-byte
/// change of it is either refused or read exactly as the decoder reads it.
fn exercise<T: Encodable + Decodable>(key: ApiKey, version: i16, msg: &T) {
    let body = encode(msg, version);
    let walked = walk(key, version, &body).unwrap_or_else(|e| panic!("{key:?} v{version} refused: {e}: {body:02x?}"));
    assert_eq!(walked, body.len(), "{key:?} v{version}");
    assert!(check_response(key, version, &body).is_ok());
    for cut in 0..body.len() {
        agrees::<T>(key, version, &body[..cut]);
    }
    let mut changed = body.clone();
    for i in 0..body.len() {
        for b in [0x00, 0x01, 0x02, 0x7f, 0x80, 0xff, body[i] ^ 0x01] {
            changed[i] = b;
            agrees::<T>(key, version, &changed);
        }
        changed[i] = body[i];
    }
}

fn api_versions(v: i16) -> ApiVersionsResponse {
    let mut m = ApiVersionsResponse::default()
        .with_api_keys(
            [(0, 0, 12), (3, 0, 13), (18, 0, 4)]
                .into_iter()
                .map(|(k, lo, hi)| ApiVersion::default().with_api_key(k).with_min_version(lo).with_max_version(hi))
                .collect(),
        )
        .with_throttle_time_ms(if v >= 1 { 5 } else { 0 });
    if v >= 3 {
        m = m
            .with_supported_features(vec![
                SupportedFeatureKey::default()
                    .with_name(s("metadata.version"))
                    .with_min_version(1)
                    .with_max_version(20),
                SupportedFeatureKey::default().with_name(s("kraft.version")),
            ])
            .with_finalized_features_epoch(7)
            .with_finalized_features(vec![
                FinalizedFeatureKey::default()
                    .with_name(s("metadata.version"))
                    .with_max_version_level(20)
                    .with_min_version_level(20),
            ])
            .with_zk_migration_ready(true)
            .with_unknown_tagged_field(9, Bytes::from_static(b"xyz"));
    }
    m
}

fn metadata(v: i16) -> MetadataResponse {
    let broker = |id: i32, host: &'static str| {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(s(host))
            .with_port(9092)
            .with_rack((v >= 1).then(|| s("rack-a")))
    };
    let partition = |i: i32| {
        MetadataResponsePartition::default()
            .with_partition_index(i)
            .with_leader_id(BrokerId(1))
            .with_leader_epoch(if v >= 7 { 4 } else { -1 })
            .with_replica_nodes(vec![BrokerId(1), BrokerId(2), BrokerId(3)])
            .with_isr_nodes(vec![BrokerId(1), BrokerId(2)])
            .with_offline_replicas(if v >= 5 { vec![BrokerId(3)] } else { vec![] })
    };
    let topic = |name: &'static str| {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(s(name))))
            .with_is_internal(v >= 1)
            .with_partitions(vec![partition(0), partition(1), partition(2)])
            .with_topic_authorized_operations(if v >= 8 { 0x0ff8 } else { i32::MIN })
    };
    MetadataResponse::default()
        .with_throttle_time_ms(if v >= 3 { 1 } else { 0 })
        .with_brokers(vec![broker(1, "kafka-1"), broker(2, "kafka-2")])
        .with_cluster_id((v >= 2).then(|| s("cluster")))
        .with_controller_id(BrokerId(if v >= 1 { 2 } else { -1 }))
        .with_topics(vec![topic("orders"), topic("payments")])
        .with_cluster_authorized_operations(if (8..=10).contains(&v) { 1 } else { i32::MIN })
        .with_error_code(if v >= 13 { 3 } else { 0 })
}

fn find_coordinator(v: i16) -> FindCoordinatorResponse {
    if v <= 3 {
        return FindCoordinatorResponse::default()
            .with_throttle_time_ms(if v >= 1 { 1 } else { 0 })
            .with_error_message((v >= 1).then(|| s("none")))
            .with_node_id(BrokerId(2))
            .with_host(s("kafka-2"))
            .with_port(9092);
    }
    let coordinator = |key: &'static str, id: i32| {
        Coordinator::default()
            .with_key(s(key))
            .with_node_id(BrokerId(id))
            .with_host(s("kafka"))
            .with_port(9092)
            .with_error_message(Some(s("msg")))
    };
    FindCoordinatorResponse::default()
        .with_throttle_time_ms(1)
        .with_coordinators(vec![coordinator("g1", 1), coordinator("g2", 2)])
}

fn describe_cluster(v: i16) -> DescribeClusterResponse {
    let broker = |id: i32| {
        DescribeClusterBroker::default()
            .with_broker_id(BrokerId(id))
            .with_host(s("kafka"))
            .with_port(9092)
            .with_rack(Some(s("r")))
            .with_is_fenced(v >= 2)
    };
    DescribeClusterResponse::default()
        .with_error_message(Some(s("none")))
        .with_cluster_id(s("cluster"))
        .with_controller_id(BrokerId(1))
        .with_brokers(vec![broker(1), broker(2), broker(3)])
}

fn produce(v: i16) -> ProduceResponse {
    use kafka_protocol::messages::produce_response::{
        BatchIndexAndErrorMessage, LeaderIdAndEpoch, NodeEndpoint, PartitionProduceResponse, TopicProduceResponse,
    };
    let partition = |i: i32| {
        let mut p = PartitionProduceResponse::default()
            .with_index(i)
            .with_base_offset(100)
            .with_log_start_offset(if v >= 5 { 3 } else { -1 });
        if v >= 8 {
            p = p
                .with_record_errors(vec![
                    BatchIndexAndErrorMessage::default()
                        .with_batch_index(1)
                        .with_batch_index_error_message(Some(s("bad"))),
                    BatchIndexAndErrorMessage::default().with_batch_index(2),
                ])
                .with_error_message(Some(s("invalid record")));
        }
        if v >= 10 {
            p = p.with_current_leader(LeaderIdAndEpoch::default().with_leader_id(BrokerId(2)).with_leader_epoch(9));
        }
        p
    };
    let topic = |name: &'static str| {
        TopicProduceResponse::default()
            .with_name(TopicName(s(if v >= 13 { "" } else { name })))
            .with_partition_responses(vec![partition(0), partition(1)])
    };
    let mut m =
        ProduceResponse::default().with_responses(vec![topic("orders"), topic("payments")]).with_throttle_time_ms(1);
    if v >= 10 {
        m = m.with_node_endpoints(vec![
            NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(s("kafka-2"))
                .with_port(9092)
                .with_rack(Some(s("r"))),
            NodeEndpoint::default().with_node_id(BrokerId(3)).with_host(s("kafka-3")).with_port(9092),
        ]);
    }
    if v >= 9 {
        m = m.with_unknown_tagged_field(5, Bytes::from_static(&[1, 2, 3]));
    }
    m
}

fn fetch(v: i16) -> FetchResponse {
    use kafka_protocol::messages::fetch_response::{
        AbortedTransaction, EpochEndOffset, FetchableTopicResponse, LeaderIdAndEpoch, NodeEndpoint, PartitionData,
        SnapshotId,
    };
    let partition = |i: i32| {
        let mut p = PartitionData::default()
            .with_partition_index(i)
            .with_high_watermark(50)
            .with_log_start_offset(if v >= 5 { 1 } else { -1 })
            .with_aborted_transactions(Some(vec![
                AbortedTransaction::default().with_producer_id(ProducerId(7)).with_first_offset(10),
                AbortedTransaction::default().with_producer_id(ProducerId(8)),
            ]))
            .with_preferred_read_replica(BrokerId(if v >= 11 { 2 } else { -1 }))
            .with_records(Some(Bytes::from_static(b"record batch bytes")));
        if v >= 12 {
            p = p
                .with_diverging_epoch(EpochEndOffset::default().with_epoch(3).with_end_offset(40))
                .with_current_leader(LeaderIdAndEpoch::default().with_leader_id(BrokerId(1)).with_leader_epoch(3))
                .with_snapshot_id(SnapshotId::default().with_end_offset(5).with_epoch(2))
                .with_unknown_tagged_field(7, Bytes::from_static(b"?"));
        }
        p
    };
    let topic = |name: &'static str| {
        FetchableTopicResponse::default()
            .with_topic(TopicName(s(if v >= 13 { "" } else { name })))
            .with_partitions(vec![partition(0), partition(1).with_records(None)])
    };
    let mut m = FetchResponse::default()
        .with_throttle_time_ms(1)
        .with_session_id(if v >= 7 { 77 } else { 0 })
        .with_responses(vec![topic("orders"), topic("payments")]);
    if v >= 16 {
        m = m.with_node_endpoints(vec![
            NodeEndpoint::default().with_node_id(BrokerId(1)).with_host(s("kafka-1")).with_port(9092),
            NodeEndpoint::default()
                .with_node_id(BrokerId(2))
                .with_host(s("kafka-2"))
                .with_port(9093)
                .with_rack(Some(s("r"))),
        ]);
    }
    m
}

fn share_fetch() -> ShareFetchResponse {
    use kafka_protocol::messages::share_fetch_response::{
        AcquiredRecords, LeaderIdAndEpoch, NodeEndpoint, PartitionData, ShareFetchableTopicResponse,
    };
    let partition = |i: i32| {
        PartitionData::default()
            .with_partition_index(i)
            .with_error_message(Some(s("e")))
            .with_acknowledge_error_message(Some(s("ack")))
            .with_current_leader(LeaderIdAndEpoch::default().with_leader_id(1).with_leader_epoch(2))
            .with_records(Some(Bytes::from_static(b"records")))
            .with_acquired_records(vec![
                AcquiredRecords::default().with_first_offset(1).with_last_offset(9).with_delivery_count(1),
                AcquiredRecords::default(),
            ])
    };
    ShareFetchResponse::default()
        .with_error_message(Some(s("none")))
        .with_responses(vec![
            ShareFetchableTopicResponse::default().with_partitions(vec![partition(0), partition(1)]),
            ShareFetchableTopicResponse::default().with_partitions(vec![partition(2)]),
        ])
        .with_node_endpoints(vec![
            NodeEndpoint::default().with_node_id(BrokerId(2)).with_host(s("kafka-2")).with_port(9092),
            NodeEndpoint::default().with_node_id(BrokerId(3)).with_host(s("kafka-3")).with_port(9092),
        ])
}

fn share_acknowledge() -> ShareAcknowledgeResponse {
    use kafka_protocol::messages::share_acknowledge_response::{
        LeaderIdAndEpoch, NodeEndpoint, PartitionData, ShareAcknowledgeTopicResponse,
    };
    let partition = |i: i32| {
        PartitionData::default()
            .with_partition_index(i)
            .with_error_message(Some(s("e")))
            .with_current_leader(LeaderIdAndEpoch::default().with_leader_id(1).with_leader_epoch(2))
    };
    ShareAcknowledgeResponse::default()
        .with_responses(vec![
            ShareAcknowledgeTopicResponse::default().with_partitions(vec![partition(0), partition(1)]),
            ShareAcknowledgeTopicResponse::default().with_partitions(vec![partition(2)]),
        ])
        .with_node_endpoints(vec![
            NodeEndpoint::default()
                .with_node_id(BrokerId(1))
                .with_host(s("kafka-1"))
                .with_port(9092)
                .with_rack(Some(s("r"))),
        ])
}

/// `n` default (smallest) elements.
fn many<T: Default>(n: usize) -> Vec<T> {
    (0..n).map(|_| T::default()).collect()
}

#[test]
fn api_versions_every_version() {
    for v in 0..=4 {
        exercise(ApiKey::ApiVersions, v, &api_versions(v));
        let mut m = ApiVersionsResponse::default().with_api_keys(many(40));
        exercise(ApiKey::ApiVersions, v, &m);
        if v >= 3 {
            m = m.with_api_keys(vec![]).with_supported_features(many(40)).with_finalized_features(many(40));
            exercise(ApiKey::ApiVersions, v, &m);
        }
    }
}

#[test]
fn metadata_every_version() {
    for v in MetadataResponse::VERSIONS.min..=MetadataResponse::VERSIONS.max {
        exercise(ApiKey::Metadata, v, &metadata(v));
        let m = MetadataResponse::default().with_brokers(many(40));
        exercise(ApiKey::Metadata, v, &m);
        let m = MetadataResponse::default().with_topics(many(40));
        exercise(ApiKey::Metadata, v, &m);
        let topic = MetadataResponseTopic::default().with_partitions(many(40));
        exercise(ApiKey::Metadata, v, &m.with_topics(vec![topic]));
    }
}

#[test]
fn find_coordinator_every_version() {
    for v in FindCoordinatorResponse::VERSIONS.min..=FindCoordinatorResponse::VERSIONS.max {
        exercise(ApiKey::FindCoordinator, v, &find_coordinator(v));
        exercise(ApiKey::FindCoordinator, v, &FindCoordinatorResponse::default());
        if v >= 4 {
            let m = FindCoordinatorResponse::default().with_coordinators(many(40));
            exercise(ApiKey::FindCoordinator, v, &m);
        }
    }
}

#[test]
fn describe_cluster_every_version() {
    for v in DescribeClusterResponse::VERSIONS.min..=DescribeClusterResponse::VERSIONS.max {
        exercise(ApiKey::DescribeCluster, v, &describe_cluster(v));
        let m = DescribeClusterResponse::default().with_brokers(many(40));
        exercise(ApiKey::DescribeCluster, v, &m);
    }
}

#[test]
fn produce_every_version() {
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    for v in ProduceResponse::VERSIONS.min..=ProduceResponse::VERSIONS.max {
        exercise(ApiKey::Produce, v, &produce(v));
        let m = ProduceResponse::default().with_responses(many(40));
        exercise(ApiKey::Produce, v, &m);
        let topic = TopicProduceResponse::default().with_partition_responses(many(40));
        exercise(ApiKey::Produce, v, &m.with_responses(vec![topic]));
        if v >= 8 {
            let partition = PartitionProduceResponse::default().with_record_errors(many(40));
            let topic = TopicProduceResponse::default().with_partition_responses(vec![partition]);
            let m = ProduceResponse::default().with_responses(vec![topic]);
            exercise(ApiKey::Produce, v, &m);
        }
        if v >= 10 {
            let m = ProduceResponse::default().with_node_endpoints(many(40));
            exercise(ApiKey::Produce, v, &m);
        }
    }
}

#[test]
fn fetch_every_version() {
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    for v in FetchResponse::VERSIONS.min..=FetchResponse::VERSIONS.max {
        exercise(ApiKey::Fetch, v, &fetch(v));
        let m = FetchResponse::default().with_responses(many(40));
        exercise(ApiKey::Fetch, v, &m);
        let topic = FetchableTopicResponse::default().with_partitions(many(40));
        exercise(ApiKey::Fetch, v, &m.with_responses(vec![topic]));
        let partition = PartitionData::default().with_aborted_transactions(Some(many(40)));
        let topic = FetchableTopicResponse::default().with_partitions(vec![partition]);
        let m = FetchResponse::default().with_responses(vec![topic]);
        exercise(ApiKey::Fetch, v, &m);
        if v >= 16 {
            let m = FetchResponse::default().with_node_endpoints(many(40));
            exercise(ApiKey::Fetch, v, &m);
        }
    }
}

#[test]
fn share_fetch_and_acknowledge() {
    use kafka_protocol::messages::share_acknowledge_response::ShareAcknowledgeTopicResponse;
    use kafka_protocol::messages::share_fetch_response::{PartitionData, ShareFetchableTopicResponse};
    exercise(ApiKey::ShareFetch, 1, &share_fetch());
    exercise(ApiKey::ShareFetch, 1, &ShareFetchResponse::default());
    for m in [
        ShareFetchResponse::default().with_responses(many(40)),
        ShareFetchResponse::default().with_node_endpoints(many(40)),
        ShareFetchResponse::default()
            .with_responses(vec![ShareFetchableTopicResponse::default().with_partitions(many(40))]),
        ShareFetchResponse::default().with_responses(vec![
            ShareFetchableTopicResponse::default()
                .with_partitions(vec![PartitionData::default().with_acquired_records(many(40))]),
        ]),
    ] {
        exercise(ApiKey::ShareFetch, 1, &m);
    }
    exercise(ApiKey::ShareAcknowledge, 1, &share_acknowledge());
    for m in [
        ShareAcknowledgeResponse::default(),
        ShareAcknowledgeResponse::default().with_responses(many(40)),
        ShareAcknowledgeResponse::default().with_node_endpoints(many(40)),
        ShareAcknowledgeResponse::default()
            .with_responses(vec![ShareAcknowledgeTopicResponse::default().with_partitions(many(40))]),
    ] {
        exercise(ApiKey::ShareAcknowledge, 1, &m);
    }
}

/// The bytes before the first array of each covered message (none for FindCoordinator v0–v3).
fn before_first_array(key: ApiKey, v: i16) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    match key {
        ApiKey::ApiVersions => b.extend([0, 0]),
        ApiKey::Metadata if v >= 3 => b.extend([0; 4]),
        ApiKey::Metadata | ApiKey::Produce => {}
        ApiKey::FindCoordinator if v >= 4 => b.extend([0; 4]),
        ApiKey::FindCoordinator => return None,
        ApiKey::DescribeCluster => {
            b.extend([0; 6]); // throttle time, error code
            b.push(0); // null error message
            if v >= 1 {
                b.push(1); // endpoint type
            }
            b.push(1); // empty cluster id
            b.extend([0; 4]); // controller id
        }
        ApiKey::Fetch => b.extend(vec![0; 4 + when(v >= 7, 6)]),
        ApiKey::ShareFetch => b.extend([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        ApiKey::ShareAcknowledge => b.extend([0, 0, 0, 0, 0, 0, 0]),
        _ => unreachable!(),
    }
    Some(b)
}

const COVERED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::Metadata, 0, 13),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::Produce, 3, 13),
    (ApiKey::Fetch, 4, 18),
    (ApiKey::ShareFetch, 1, 1),
    (ApiKey::ShareAcknowledge, 1, 1),
];

#[test]
fn huge_first_counts_are_refused() {
    for &(key, lo, hi) in COVERED {
        for v in lo..=hi {
            let Some(prefix) = before_first_array(key, v) else {
                continue;
            };
            let flexible = match key {
                ApiKey::ApiVersions | ApiKey::FindCoordinator => v >= 3,
                ApiKey::Metadata | ApiKey::Produce => v >= 9,
                ApiKey::Fetch => v >= 12,
                _ => true,
            };
            let counts: &[&[u8]] = if flexible {
                &[&[0xff, 0xff, 0xff, 0xff, 0x0f], &[0x80, 0x80, 0x80, 0x01]]
            } else {
                &[&[0x7f, 0xff, 0xff, 0xff], &[0x10, 0x00, 0x73, 0x00]]
            };
            for count in counts {
                let mut body = prefix.clone();
                body.extend_from_slice(count);
                body.extend([0; 64]);
                assert!(check_response(key, v, &body).is_err(), "{key:?} v{v} accepted {body:02x?}");
            }
        }
    }
}

#[test]
fn the_fuzzed_metadata_crash_is_refused() {
    // Metadata v0 whose brokers count is 0x73001000, from fuzz/fuzz_targets/response.rs.
    assert!(check_response(ApiKey::Metadata, 0, &[115, 0, 16, 0, 0]).is_err());
}

#[test]
fn known_tags_are_walked_as_the_decoder_reads_them_not_by_their_size() {
    // ApiVersions v3 whose supported_features tag declares 1 byte but holds a huge count.
    let mut body = vec![0, 0, 1, 0, 0, 0, 0]; // error code, no api keys, throttle time
    body.extend([1, 0, 1]); // one tagged field: tag 0, "1 byte"
    body.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
    body.extend([0; 32]);
    assert!(check_response(ApiKey::ApiVersions, 3, &body).is_err());
    // A Produce v10 node_endpoints tag declaring 0 bytes, followed by a real array.
    let mut body = vec![1, 0, 0, 0, 0]; // no topics, throttle time
    body.extend([1, 0, 0]); // one tagged field: tag 0, "0 bytes"
    // One endpoint: node 1, host "hi", port 9, null rack, no tagged fields.
    body.extend([2, 0, 0, 0, 1, 3, b'h', b'i', 0, 0, 0, 9, 0, 0]);
    let mut buf = Bytes::copy_from_slice(&body);
    let decoded = ProduceResponse::decode(&mut buf, 10).unwrap();
    assert_eq!(decoded.node_endpoints.len(), 1);
    assert_eq!(walk(ApiKey::Produce, 10, &body).unwrap(), body.len());
}

#[test]
fn tags_not_valid_for_the_version_are_refused() {
    // Produce v9 and Fetch v12 have no node_endpoints; the decoder refuses tag 0 there.
    assert!(check_response(ApiKey::Produce, 9, &[1, 0, 0, 0, 0, 1, 0, 1, 1]).is_err());
    let fetch = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1];
    assert!(check_response(ApiKey::Fetch, 12, &fetch).is_err());
    assert!(check_response(ApiKey::Fetch, 16, &fetch).is_ok());
}

#[test]
fn uncovered_apis_and_versions_are_refused() {
    assert!(check_response(ApiKey::Produce, 2, &[0; 16]).is_err());
    assert!(check_response(ApiKey::Fetch, 19, &[0; 16]).is_err());
    assert!(check_response(ApiKey::ShareFetch, 0, &[0; 16]).is_err());
    assert!(check_response(ApiKey::ListOffsets, 1, &[0; 16]).is_err());
}
