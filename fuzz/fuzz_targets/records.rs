//! Any bytes in a Produce request's records field must be read or refused, never panic, and the
//! decompressed size stays within the limit.
#![no_main]

use bytes::BytesMut;
use eventgate::wire::records::{self, RawBatch, write_batch, write_record_with_header};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for batch in records::batches(data) {
        let Ok(batch) = batch else { break };
        let _ = batch.verify_crc();
        let mut scratch = Vec::new();
        let Ok((section, framing)) = batch.records_data(&mut scratch, 1 << 20) else { continue };
        assert!(section.len() <= 1 << 20);
        let mut rewritten = Vec::new();
        for rec in records::records(section) {
            let Ok(rec) = rec else { break };
            let _ = rec.headers().count();
            write_record_with_header(&mut rewritten, &rec, b"k", b"v");
        }
        let mut out = BytesMut::new();
        if write_batch(&mut out, &batch.header, &rewritten, framing).is_ok() {
            let (again, _) = RawBatch::parse(&out).expect("a batch eventgate wrote parses");
            again.verify_crc().expect("a batch eventgate wrote has a correct CRC");
        }
    }
});
