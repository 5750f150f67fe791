//! Compressed bodies: a message's `content_encoding` (`gzip` or `zstd`) and the body it stands for.
//!
//! `pipeline.max_body_bytes` bounds the decompressed body: the decompressor stops reading one byte
//! past the limit, so a small message that would expand to gigabytes (a zip bomb) costs at most the
//! limit in memory and is rejected as `body_too_large`, never expanded.

use std::borrow::Cow;
use std::io::Read;

use crate::codes::RejectionCode;
use crate::dialect::Rejection;

/// How the body of a message is encoded, from its `content_encoding` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No `content_encoding` (or `identity`): the body is the JSON itself.
    Identity,
    /// A gzip member (RFC 1952); several members are read one after the other, as `gunzip` does.
    Gzip,
    /// A Zstandard frame (RFC 8878), or several.
    Zstd,
}

impl Encoding {
    /// The encoding a `content_encoding` names; tokens are matched without regard to case, as in
    /// HTTP. An encoding the service cannot read rejects the message.
    pub fn named(content_encoding: Option<&str>) -> Result<Self, Rejection> {
        let Some(name) = content_encoding.map(str::trim).filter(|n| !n.is_empty()) else {
            return Ok(Encoding::Identity);
        };
        match name.to_ascii_lowercase().as_str() {
            "identity" => Ok(Encoding::Identity),
            "gzip" | "x-gzip" => Ok(Encoding::Gzip),
            "zstd" => Ok(Encoding::Zstd),
            _ => Err(Rejection::new(
                RejectionCode::UnknownEncoding,
                format!(
                    "unknown content_encoding `{}`; expected gzip, zstd or none",
                    name.escape_debug()
                ),
            )),
        }
    }

    /// The body this encoding stands for, at most `max_bytes` long. An uncompressed body is
    /// borrowed, not copied; a compressed one is read into a buffer that never grows past the limit.
    pub fn decode(self, body: &[u8], max_bytes: usize) -> Result<Cow<'_, [u8]>, Rejection> {
        let corrupt = |error: std::io::Error| {
            Rejection::new(
                RejectionCode::InvalidCompression,
                format!("the body is not valid {} data: {error}", self.name()),
            )
        };
        let reader: Box<dyn Read + '_> = match self {
            Encoding::Identity => return Ok(Cow::Borrowed(body)),
            Encoding::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(body)),
            Encoding::Zstd => {
                let mut decoder =
                    zstd::stream::read::Decoder::with_buffer(body).map_err(corrupt)?;
                // A frame may ask for a window as large as 2 GiB, allocated before a byte is
                // written: none larger than what covers the limit is accepted (see `window_log`).
                decoder
                    .window_log_max(window_log(max_bytes))
                    .map_err(corrupt)?;
                Box::new(decoder)
            }
        };
        let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX);
        let mut decoded = Vec::with_capacity(body.len().saturating_mul(4).min(max_bytes));
        reader
            .take(limit.saturating_add(1))
            .read_to_end(&mut decoded)
            .map_err(corrupt)?;
        if decoded.len() > max_bytes {
            return Err(Rejection::new(
                RejectionCode::BodyTooLarge,
                format!(
                    "the body expands past {max_bytes} bytes once decompressed; at most \
                     {max_bytes} are accepted"
                ),
            ));
        }
        Ok(Cow::Owned(decoded))
    }

    /// The encoding's `content_encoding` token.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }
}

/// The base-2 logarithm of the largest Zstandard window accepted: the smallest that covers
/// `max_bytes`, but never less than 2^23 (8 MiB), the window zstd's levels up to 19 use on a stream
/// whose size the encoder was not told, so that any ordinary encoder's frames are read.
fn window_log(max_bytes: usize) -> u32 {
    max_bytes
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .clamp(23, 31)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn an_encoding_is_named_without_regard_to_case() {
        assert_eq!(Encoding::named(None), Ok(Encoding::Identity));
        assert_eq!(Encoding::named(Some("")), Ok(Encoding::Identity));
        assert_eq!(Encoding::named(Some(" GZip ")), Ok(Encoding::Gzip));
        assert_eq!(Encoding::named(Some("zstd")), Ok(Encoding::Zstd));
        let unknown = Encoding::named(Some("br")).unwrap_err();
        assert_eq!(unknown.code, RejectionCode::UnknownEncoding);
        assert!(unknown.message.contains("`br`"), "{}", unknown.message);
    }

    #[test]
    fn compressed_bodies_decode_to_what_was_compressed() {
        let data = br#"[{"customerID": "A"}]"#.repeat(100);
        let zstd = zstd::encode_all(&data[..], 3).unwrap();
        for (encoding, body) in [(Encoding::Gzip, gzip(&data)), (Encoding::Zstd, zstd)] {
            assert_eq!(&*encoding.decode(&body, data.len()).unwrap(), &data[..]);
        }
        assert!(matches!(
            Encoding::Identity.decode(&data, data.len()).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn a_body_that_expands_past_the_limit_is_too_large() {
        let data = vec![0u8; 1 << 20];
        let zstd = zstd::encode_all(&data[..], 3).unwrap();
        for (encoding, body) in [(Encoding::Gzip, gzip(&data)), (Encoding::Zstd, zstd)] {
            let error = encoding.decode(&body, data.len() - 1).unwrap_err();
            assert_eq!(error.code, RejectionCode::BodyTooLarge, "{encoding:?}");
        }
    }

    #[test]
    fn corrupt_data_is_refused_with_its_encoding_named() {
        let mut body = gzip(&[b'x'; 1000]);
        let middle = body.len() / 2;
        body[middle] ^= 0xff;
        body.truncate(body.len() - 4);
        for (encoding, body) in [(Encoding::Gzip, &body[..]), (Encoding::Zstd, b"not zstd")] {
            let error = encoding.decode(body, 1 << 20).unwrap_err();
            assert_eq!(
                error.code,
                RejectionCode::InvalidCompression,
                "{encoding:?}"
            );
        }
    }

    #[test]
    fn the_zstd_window_covers_the_limit_and_every_ordinary_encoder() {
        assert_eq!(window_log(16 << 20), 24);
        assert_eq!(window_log((16 << 20) + 1), 25);
        assert_eq!(window_log(1), 23);
    }
}
