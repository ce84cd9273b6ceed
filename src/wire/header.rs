//! Request and response headers.
//!
//! Every request starts with `api_key: INT16, api_version: INT16, correlation_id: INT32`; every
//! response starts with the `correlation_id` of its request. That fixed prefix is all eventgate needs
//! to route a frame, so it is read in place and nothing else is decoded.

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::WireError;
use super::reader::Reader;

/// The routing facts of one request frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestMeta {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl RequestMeta {
    /// Reads the fixed header prefix of a request frame (size prefix included).
    pub fn peek(frame: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(frame.get(4..).unwrap_or_default());
        Ok(Self {
            api_key: r.i16("request api key")?,
            api_version: r.i16("request api version")?,
            correlation_id: r.i32("request correlation id")?,
        })
    }

    /// The API key, when eventgate knows it.
    pub fn key(&self) -> Option<ApiKey> {
        ApiKey::try_from(self.api_key).ok()
    }

    /// The offset in the frame (size prefix included) at which the request body starts.
    /// Only meaningful for known API keys.
    pub fn body_offset(&self, frame: &[u8]) -> Result<usize, WireError> {
        let key = self.key().ok_or(WireError::Malformed { what: "request header", why: "unknown api key" })?;
        let header_version = key.request_header_version(self.api_version);
        let mut r = Reader::new(frame.get(4..).unwrap_or_default());
        r.skip(8, "request header")?;
        if header_version >= 1 {
            r.nullable_str16("client id")?;
        }
        if header_version >= 2 {
            r.skip_tagged_fields("request header tagged fields")?;
        }
        Ok(4 + r.position())
    }
}

/// The `client_id` of a request frame's header (size prefix included); `None` when the header has
/// none (a null client id, or request header v0).
pub fn client_id(meta: &RequestMeta, frame: &[u8]) -> Result<Option<String>, WireError> {
    let Some(key) = meta.key() else { return Ok(None) };
    if key.request_header_version(meta.api_version) < 1 {
        return Ok(None);
    }
    let mut r = Reader::new(frame.get(4..).unwrap_or_default());
    r.skip(8, "request header")?;
    Ok(r.nullable_str16("client id")?.map(|s| String::from_utf8_lossy(s).into_owned()))
}

/// Encodes a whole request frame (size prefix, header, body), as a client sends it.
pub fn request_frame(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &'static str,
    body: &impl Encodable,
) -> Result<BytesMut, WireError> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let encode = |source| WireError::Encode { api: "request", version, source };
    let mut b = BytesMut::new();
    b.put_i32(0);
    header.encode(&mut b, key.request_header_version(version)).map_err(encode)?;
    body.encode(&mut b, version).map_err(encode)?;
    let len = (b.len() - 4) as i32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    Ok(b)
}

/// The correlation id of a response frame (size prefix included).
pub fn response_correlation_id(frame: &[u8]) -> Result<i32, WireError> {
    Reader::new(frame.get(4..).unwrap_or_default()).i32("response correlation id")
}

/// The length of the response header for `api_key`/`api_version` at the start of `body`
/// (the frame without its size prefix).
pub fn response_header_len(api_key: ApiKey, api_version: i16, body: &[u8]) -> Result<usize, WireError> {
    let mut r = Reader::new(body);
    r.skip(4, "response correlation id")?;
    if api_key.response_header_version(api_version) >= 1 {
        r.skip_tagged_fields("response header tagged fields")?;
    }
    Ok(r.position())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peeks_fixed_header_and_finds_body() {
        // Metadata v12 uses request header v2: client id then tagged fields.
        let mut f = vec![0, 0, 0, 0];
        f.extend_from_slice(&3i16.to_be_bytes());
        f.extend_from_slice(&12i16.to_be_bytes());
        f.extend_from_slice(&42i32.to_be_bytes());
        f.extend_from_slice(&2i16.to_be_bytes());
        f.extend_from_slice(b"id");
        f.push(0); // no tagged fields
        f.push(0xAA); // body
        let m = RequestMeta::peek(&f).unwrap();
        assert_eq!(m, RequestMeta { api_key: 3, api_version: 12, correlation_id: 42 });
        assert_eq!(m.body_offset(&f).unwrap(), f.len() - 1);
    }

    #[test]
    fn short_frames_are_errors() {
        assert!(RequestMeta::peek(&[0, 0, 0, 2, 0, 3]).is_err());
        assert!(response_correlation_id(&[0, 0, 0, 1, 9]).is_err());
    }
}
