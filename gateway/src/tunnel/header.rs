//! The stream header: `ISTT` magic, version 1, SNI length (u16, big endian),
//! SNI bytes, destination port (u16, big endian).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 4] = b"ISTT";
const VERSION: u8 = 1;
/// Longest SNI accepted (DNS names are at most 253 bytes).
pub const MAX_SNI: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("reading the tunnel header: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an isthmus tunnel stream (bad magic)")]
    Magic,
    #[error("unsupported tunnel header version {0}")]
    Version(u8),
    #[error("SNI of {0} bytes is longer than {MAX_SNI}")]
    SniTooLong(usize),
    #[error("SNI is empty or not ASCII")]
    BadSni,
}

pub async fn write_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    sni: &str,
    port: u16,
) -> Result<(), HeaderError> {
    w.write_all(&encode_header(sni, port)?).await?;
    Ok(())
}

/// The header's bytes (kept by a 0-RTT stream to send again if the peer
/// refuses the early data).
pub fn encode_header(sni: &str, port: u16) -> Result<Vec<u8>, HeaderError> {
    if sni.len() > MAX_SNI {
        return Err(HeaderError::SniTooLong(sni.len()));
    }
    if sni.is_empty() || !sni.is_ascii() {
        return Err(HeaderError::BadSni);
    }
    let mut buf = Vec::with_capacity(9 + sni.len());
    buf.extend_from_slice(MAGIC);
    buf.push(VERSION);
    buf.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    buf.extend_from_slice(sni.as_bytes());
    buf.extend_from_slice(&port.to_be_bytes());
    Ok(buf)
}

pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<(String, u16), HeaderError> {
    let mut magic = [0u8; 5];
    r.read_exact(&mut magic).await?;
    if &magic[..4] != MAGIC {
        return Err(HeaderError::Magic);
    }
    if magic[4] != VERSION {
        return Err(HeaderError::Version(magic[4]));
    }
    let len = usize::from(r.read_u16().await?);
    if len > MAX_SNI {
        return Err(HeaderError::SniTooLong(len));
    }
    let mut sni = vec![0u8; len];
    r.read_exact(&mut sni).await?;
    let sni = String::from_utf8(sni).map_err(|_| HeaderError::BadSni)?;
    if sni.is_empty() || !sni.is_ascii() {
        return Err(HeaderError::BadSni);
    }
    let port = r.read_u16().await?;
    Ok((sni.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn roundtrip_and_refusals() {
        let mut buf = Vec::new();
        write_header(
            &mut buf,
            "outbound_.9080_._.reviews.default.svc.cluster.local",
            15443,
        )
        .await
        .expect("write");
        buf.extend_from_slice(b"payload");
        let mut r = buf.as_slice();
        let (sni, port) = read_header(&mut r).await.expect("read");
        assert_eq!(
            (sni.as_str(), port),
            ("outbound_.9080_._.reviews.default.svc.cluster.local", 15443)
        );
        assert_eq!(r, b"payload", "the header consumes exactly its bytes");
        assert!(matches!(
            read_header(&mut &b"HTTP/1.1 200"[..]).await,
            Err(HeaderError::Magic)
        ));
        assert!(matches!(
            read_header(&mut &b"ISTT\x02"[..]).await,
            Err(HeaderError::Version(2))
        ));
        assert!(matches!(
            read_header(&mut &b"ISTT\x01\x01\x00"[..]).await,
            Err(HeaderError::SniTooLong(256))
        ));
        assert!(matches!(
            read_header(&mut &b"ISTT\x01\x00\x05ab"[..]).await,
            Err(HeaderError::Io(_))
        ));
        assert!(write_header(&mut Vec::new(), "", 1).await.is_err());
    }
}
