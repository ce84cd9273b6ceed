use super::*;

type OwnedRecord = (i64, i32, Option<Vec<u8>>, Option<Vec<u8>>, Vec<(Vec<u8>, Option<Vec<u8>>)>);

fn sample_records() -> Vec<OwnedRecord> {
    vec![
        (0, 0, Some(b"k0".to_vec()), Some(br#"{"lumens":1}"#.to_vec()), vec![]),
        (
            5,
            1,
            None,
            Some(b"not json".to_vec()),
            vec![
                (b"dup".to_vec(), Some(b"a".to_vec())),
                (b"dup".to_vec(), Some(b"b".to_vec())),
                (b"nil".to_vec(), None),
            ],
        ),
        (-3, 2, Some(vec![]), None, vec![(b"h".to_vec(), Some(vec![0xff; 300]))]),
    ]
}

fn header(codec: Codec, count: i32) -> BatchHeader {
    BatchHeader {
        attributes: codec.bits() | 0x10, // transactional bit kept as is
        max_timestamp: 1_700_000_000_005,
        producer_id: 4242,
        producer_epoch: 7,
        base_sequence: 99,
        ..BatchHeader::new(count, codec, 1_700_000_000_000)
    }
}

fn encode(records: &[OwnedRecord]) -> Vec<u8> {
    let mut section = Vec::new();
    for (ts, off, k, v, hs) in records {
        write_record(
            &mut section,
            *ts,
            *off,
            k.as_deref(),
            v.as_deref(),
            hs.iter().map(|(k, v)| (k.as_slice(), v.as_deref())).collect::<Vec<_>>().into_iter(),
        );
    }
    section
}

fn owned(r: &Record<'_>) -> OwnedRecord {
    (
        r.timestamp_delta,
        r.offset_delta,
        r.key.map(<[u8]>::to_vec),
        r.value.map(<[u8]>::to_vec),
        r.headers().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect(),
    )
}

fn decode_all(batch: &[u8]) -> (BatchHeader, Vec<OwnedRecord>, Framing) {
    let (raw, used) = RawBatch::parse(batch).unwrap();
    assert_eq!(used, batch.len());
    raw.verify_crc().unwrap();
    let mut scratch = Vec::new();
    let (data, framing) = raw.records_data(&mut scratch, 1 << 20).unwrap();
    assert_eq!(count_records(data, raw.header.record_count).unwrap(), raw.header.record_count as usize);
    let recs = records(data).map(|r| owned(&r.unwrap())).collect();
    (raw.header.clone(), recs, framing)
}

#[test]
fn batches_round_trip_with_every_codec() {
    let recs = sample_records();
    for codec in [Codec::None, Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        let h = header(codec, recs.len() as i32);
        let mut out = BytesMut::new();
        write_batch(&mut out, &h, &encode(&recs), Framing::Standard).unwrap();
        let (got_h, got_r, _) = decode_all(&out);
        assert_eq!(got_r, recs, "{codec:?}");
        assert_eq!(BatchHeader { crc: 0, ..got_h }, h, "{codec:?}");
    }
}

#[test]
fn added_header_keeps_everything_else() {
    let recs = sample_records();
    let section = encode(&recs);
    let mut rewritten = Vec::new();
    for r in records(&section) {
        write_record_with_header(&mut rewritten, &r.unwrap(), b"_asyncapi_eg_validation_error", b"{\"errors\":[]}");
    }
    let got: Vec<OwnedRecord> = records(&rewritten).map(|r| owned(&r.unwrap())).collect();
    for (before, after) in recs.iter().zip(&got) {
        let mut expected = before.clone();
        expected.4.push((b"_asyncapi_eg_validation_error".to_vec(), Some(b"{\"errors\":[]}".to_vec())));
        assert_eq!(&expected, after);
    }
}

#[test]
fn untouched_batch_encodes_to_identical_bytes() {
    let recs = sample_records();
    let mut first = BytesMut::new();
    write_batch(&mut first, &header(Codec::None, 3), &encode(&recs), Framing::Standard).unwrap();
    let (raw, _) = RawBatch::parse(&first).unwrap();
    let mut again = BytesMut::new();
    write_batch(&mut again, &raw.header, raw.stored_records(), Framing::Standard).unwrap();
    assert_eq!(first, again);
}

#[test]
fn crc_mismatch_and_wrong_count_are_detected() {
    let recs = sample_records();
    let mut out = BytesMut::new();
    write_batch(&mut out, &header(Codec::None, 3), &encode(&recs), Framing::Standard).unwrap();
    let mut bad = out.to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let (raw, _) = RawBatch::parse(&bad).unwrap();
    assert!(matches!(raw.verify_crc(), Err(RecordError::Crc { .. })));

    let mut lying = BytesMut::new();
    write_batch(&mut lying, &header(Codec::None, 5), &encode(&recs), Framing::Standard).unwrap();
    let (raw, _) = RawBatch::parse(&lying).unwrap();
    let mut scratch = Vec::new();
    let (data, _) = raw.records_data(&mut scratch, 1 << 20).unwrap();
    assert!(matches!(count_records(data, 5), Err(RecordError::RecordCount { declared: 5, found: 3 })));
}

#[test]
fn truncated_batches_fail_at_every_byte() {
    let recs = sample_records();
    for codec in [Codec::None, Codec::Zstd] {
        let mut out = BytesMut::new();
        write_batch(&mut out, &header(codec, 3), &encode(&recs), Framing::Standard).unwrap();
        for cut in 0..out.len() {
            let piece = &out[..cut];
            let ok = RawBatch::parse(piece).is_ok();
            assert!(!ok, "{codec:?} cut at {cut} parsed");
        }
        // A record section cut anywhere fails to walk or to count.
        let section = encode(&recs);
        for cut in 0..section.len() {
            assert!(count_records(&section[..cut], 3).is_err(), "section cut at {cut}");
        }
    }
}

#[test]
fn crafted_counts_do_not_allocate_or_panic() {
    // A record claiming 2^30 headers in a handful of bytes.
    let mut section = Vec::new();
    let mut body = vec![0u8];
    put_varlong(&mut body, 0);
    put_varint(&mut body, 0);
    put_varint(&mut body, -1);
    put_varint(&mut body, -1);
    put_varint(&mut body, 1 << 30);
    put_varint(&mut section, body.len() as i32);
    section.extend_from_slice(&body);
    assert!(count_records(&section, 1).is_err());
}

#[test]
fn codec_errors_become_the_record_errors_of_the_same_name_and_text() {
    let cases = [
        CodecError::UnknownCodec(6),
        CodecError::Decompress { codec: "zstd", reason: "bad frame".into() },
        CodecError::Compress { codec: "gzip", reason: "full".into() },
        CodecError::TooLarge { limit: 1024 },
    ];
    for e in cases {
        let text = e.to_string();
        let r = RecordError::from(e.clone());
        assert_eq!(r.to_string(), text);
        assert!(matches!(&r, RecordError::Codec(c) if *c == e), "{e:?} became {r:?}");
    }
    // A batch naming an unknown codec fails as before.
    let header = BatchHeader { attributes: 7, ..BatchHeader::new(1, Codec::None, 0) };
    assert!(matches!(header.codec(), Err(RecordError::Codec(CodecError::UnknownCodec(7)))));
}

#[test]
fn plausible_records_are_what_the_bytes_can_hold() {
    let mut section = Vec::new();
    for i in 0..3 {
        write_record(&mut section, i, i as i32, None, Some(b"v"), std::iter::empty());
    }
    let honest = batch_bytes(3, &section);
    assert_eq!(plausible_records(&honest), 3);
    // The same bytes claiming two billion records: what 3 small records' bytes can hold.
    let liar = batch_bytes(i32::MAX, &section);
    assert_eq!(declared_records(&liar), i32::MAX as u64);
    assert!(plausible_records(&liar) <= section.len() as u64 / 7, "{}", plausible_records(&liar));
}

fn batch_bytes(count: i32, section: &[u8]) -> Vec<u8> {
    let header = BatchHeader::new(count, crate::wire::compression::Codec::None, 0);
    let mut out = bytes::BytesMut::new();
    write_batch(&mut out, &header, section, crate::wire::compression::Framing::Standard).unwrap();
    out.to_vec()
}
