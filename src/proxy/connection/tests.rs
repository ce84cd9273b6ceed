use super::*;

/// A writer that accepts at most `chunk` bytes per call.
struct Trickle {
    got: Vec<u8>,
    chunk: usize,
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.chunk);
        self.got.extend_from_slice(&buf[..n]);
        std::task::Poll::Ready(Ok(n))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// A client and a scripted broker around one driven connection, over in-memory pipes.
mod driver {
    use std::collections::BTreeSet;

    use bytes::BytesMut;
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    use kafka_protocol::messages::{
        ApiKey, ApiVersionsRequest, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse,
        ProduceRequest, ProduceResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::super::*;
    use crate::proxy::produce::tests::{BAD, GOOD, TOPIC, reject, request as produce_request, validation};
    use crate::proxy::stages::testing::{decode_request, request, response_frame};

    fn gateway() -> Arc<Gateway> {
        let config = crate::config::Settings::default().resolve().expect("default settings resolve");
        Gateway::new(config, Arc::new(validation(reject())), None)
    }

    /// Starts the driver; returns the client's and the broker's ends, and the driver's result.
    fn start(gw: &Arc<Gateway>) -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<Result<(), ConnError>>) {
        let (client, client_side) = tokio::io::duplex(1 << 20);
        let (broker_side, broker) = tokio::io::duplex(1 << 20);
        let gw = gw.clone();
        let session = Session::new("127.0.0.1:1".parse().expect("address"));
        let task =
            tokio::spawn(async move { drive(&gw, &session, Halves::of(client_side), Halves::of(broker_side)).await });
        (client, broker, task)
    }

    async fn read_frame(s: &mut DuplexStream) -> Option<Bytes> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.ok()?;
        let mut frame = vec![0u8; 4 + i32::from_be_bytes(len) as usize];
        frame[..4].copy_from_slice(&len);
        s.read_exact(&mut frame[4..]).await.ok()?;
        Some(Bytes::from(frame))
    }

    fn correlation(frame: &[u8]) -> i32 {
        i32::from_be_bytes(frame[4..8].try_into().expect("4 bytes"))
    }

    fn with_correlation(frame: Bytes, id: i32) -> Bytes {
        let mut f = BytesMut::from(&frame[..]);
        f[8..12].copy_from_slice(&id.to_be_bytes());
        f.freeze()
    }

    fn produce_answer(correlation_id: i32, parts: &[(&str, i32)]) -> Bytes {
        let mut resp = ProduceResponse::default();
        for (topic, p) in parts {
            resp.responses.push(
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_string((*topic).to_owned())))
                    .with_partition_responses(vec![
                        PartitionProduceResponse::default().with_index(*p).with_base_offset(7),
                    ]),
            );
        }
        response_frame(ApiKey::Produce, 9, correlation_id, &resp)
    }

    /// Pipelined requests whose answers come from four places (eventgate alone, the broker
    /// as it sent it, the broker's with eventgate's refusals merged in, the broker's with
    /// addresses rewritten) reach the client in request order; requests eventgate answers
    /// itself never reach the broker, and a refused partition is left out of what does.
    #[tokio::test]
    async fn answers_keep_request_order_whoever_makes_them() {
        let gw = gateway();
        let (mut client, mut broker, task) = start(&gw);
        let v0 = request(ApiKey::ApiVersions, 0, 1, &ApiVersionsRequest::default());
        let mut too_new = v0.to_vec();
        too_new[6..8].copy_from_slice(&99i16.to_be_bytes());
        let requests = [
            Bytes::from(too_new),                                               // 1: local
            request(ApiKey::ListOffsets, 7, 2, &ListOffsetsRequest::default()), // 2: untouched
            with_correlation(produce_request(9, -1, &[(TOPIC, 0, &[GOOD]), (TOPIC, 1, &[BAD])]).1, 3), // 3: merged
            with_correlation(produce_request(9, -1, &[(TOPIC, 0, &[BAD])]).1, 4), // 4: local refusal
            request(ApiKey::Metadata, 12, 5, &MetadataRequest::default()),      // 5: rewritten
        ];
        // Pipelined: everything is written before any answer is read.
        for r in &requests {
            client.write_all(r).await.unwrap();
        }
        // The broker sees 2, 3 (without partition 1) and 5, in order, and answers them.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let f = read_frame(&mut broker).await.expect("a request");
            let meta = RequestMeta::peek(&f).unwrap();
            seen.push(meta.correlation_id);
            let answer = match meta.correlation_id {
                2 => response_frame(ApiKey::ListOffsets, 7, 2, &ListOffsetsResponse::default()),
                3 => {
                    let sent: ProduceRequest = decode_request(&f);
                    let parts: BTreeSet<i32> =
                        sent.topic_data.iter().flat_map(|t| t.partition_data.iter().map(|p| p.index)).collect();
                    assert_eq!(parts, BTreeSet::from([0]), "the refused partition stays with eventgate");
                    produce_answer(3, &[(TOPIC, 0)])
                }
                _ => response_frame(ApiKey::Metadata, 12, 5, &MetadataResponse::default()),
            };
            broker.write_all(&answer).await.unwrap();
        }
        assert_eq!(seen, vec![2, 3, 5]);
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(read_frame(&mut client).await.expect("an answer"));
        }
        assert_eq!(got.iter().map(|f| correlation(f)).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert_eq!(got[0], crate::wire::versions::unsupported_version_frame(1));
        assert_eq!(got[1], response_frame(ApiKey::ListOffsets, 7, 2, &ListOffsetsResponse::default()), "as sent");
        let merged: ProduceResponse = crate::proxy::stages::testing::decode_response(ApiKey::Produce, 9, &got[2]);
        let codes: Vec<(i32, i16)> =
            merged.responses[0].partition_responses.iter().map(|p| (p.index, p.error_code)).collect();
        assert_eq!(codes, vec![(0, 0), (1, crate::validate::batch::codes::INVALID_RECORD)]);
        drop(client);
        drop(broker);
        let _ = task.await;
    }

    /// A broker frame nobody asked for: the answers before it are delivered, then the
    /// connection closes with an error naming it.
    #[tokio::test]
    async fn an_unsolicited_broker_frame_closes_after_the_answers_before_it() {
        let gw = gateway();
        let (mut client, mut broker, task) = start(&gw);
        client.write_all(&request(ApiKey::ListOffsets, 7, 1, &ListOffsetsRequest::default())).await.unwrap();
        read_frame(&mut broker).await.expect("the request");
        let answer = response_frame(ApiKey::ListOffsets, 7, 1, &ListOffsetsResponse::default());
        let stray = response_frame(ApiKey::ListOffsets, 7, 77, &ListOffsetsResponse::default());
        broker.write_all(&[&answer[..], &stray[..]].concat()).await.unwrap();
        assert_eq!(read_frame(&mut client).await.expect("the answer"), answer);
        let result = task.await.unwrap();
        assert!(matches!(result, Err(ConnError::UnsolicitedResponse(77))), "{result:?}");
        assert!(read_frame(&mut client).await.is_none(), "closed");
    }

    /// An answer whose correlation id is not the next one owed closes the connection.
    #[tokio::test]
    async fn an_answer_out_of_order_closes_the_connection() {
        let gw = gateway();
        let (mut client, mut broker, task) = start(&gw);
        for id in [1, 2] {
            client.write_all(&request(ApiKey::ListOffsets, 7, id, &ListOffsetsRequest::default())).await.unwrap();
        }
        read_frame(&mut broker).await.expect("request 1");
        read_frame(&mut broker).await.expect("request 2");
        broker.write_all(&response_frame(ApiKey::ListOffsets, 7, 2, &ListOffsetsResponse::default())).await.unwrap();
        let result = task.await.unwrap();
        assert!(matches!(result, Err(ConnError::UnexpectedCorrelation { expected: 1, got: 2 })), "{result:?}");
    }

    /// An `acks=0` request eventgate refuses: the valid rest is forwarded, then the connection
    /// closes, naming the stage; the producer never gets an answer.
    #[tokio::test]
    async fn a_refused_acks_zero_request_forwards_the_rest_then_closes() {
        let gw = gateway();
        let (mut client, mut broker, task) = start(&gw);
        let (_, frame) = produce_request(9, 0, &[(TOPIC, 0, &[GOOD]), (TOPIC, 1, &[BAD])]);
        client.write_all(&frame).await.unwrap();
        let sent: ProduceRequest = decode_request(&read_frame(&mut broker).await.expect("the valid rest"));
        assert_eq!(sent.topic_data[0].partition_data.len(), 1);
        let result = task.await.unwrap();
        match result {
            Err(ConnError::Closed { stage: "produce", reason }) => assert!(reason.contains("acks=0"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(read_frame(&mut client).await.is_none(), "no answer, closed");
    }
}

#[tokio::test]
async fn partial_writes_keep_every_byte_in_order() {
    let frames: Vec<Bytes> = (0u8..100).map(|i| Bytes::from(vec![i; (i as usize % 7) + 1])).collect();
    let expected: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    for chunk in [1, 3, 5, 1000] {
        let mut out: VecDeque<Bytes> = frames.iter().cloned().collect();
        let mut w = Trickle { got: Vec::new(), chunk };
        write_frames(&mut w, &mut out).await.unwrap();
        assert_eq!(w.got, expected, "chunk {chunk}");
        assert!(out.is_empty());
    }
}
