//! Accepted connections on which an answer leaves in as few writes as h2 allows.
//!
//! h2 keeps a DATA payload of 256 bytes or more out of its write buffer when the socket takes
//! vectored writes, and must then write before it can buffer the trailers: a Recommend
//! (about 430 bytes at k = 10) left in two `writev`s, each a send that wakes the peer, where
//! Health's 7 bytes left in one. Told the socket has no vectored writes, h2 copies payloads
//! under 1 KiB into its buffer and hands larger ones over in pieces; this type holds what it
//! is handed until h2 flushes, and sends it in one write. A small answer (headers, message,
//! trailers) leaves in one write, a larger one in two as before; the price is a copy of the
//! larger payloads. Figures in `load-tests/e2e/README.md`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes held before a write goes to the socket unflushed: h2 flushes after every batch of
/// frames, so this only bounds a burst larger than any one answer's frames.
const HOLD_AT_MOST: usize = 64 * 1024;

/// A TCP connection that gathers writes until flushed (see the module's comment): tokio's
/// `BufWriter`, which would report vectored writes, reporting none.
#[derive(Debug)]
pub struct OneWrite(BufWriter<TcpStream>);

impl OneWrite {
    pub fn new(io: TcpStream) -> Self {
        Self(BufWriter::with_capacity(HOLD_AT_MOST, io))
    }
}

impl AsyncRead for OneWrite {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for OneWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for OneWrite {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Writes are held until a flush, then arrive whole and in order, bursts larger than the
    /// hold limit included.
    #[tokio::test]
    async fn held_writes_arrive_whole_and_in_order_on_flush() -> io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let client = tokio::spawn(async move {
            let mut peer = TcpStream::connect(addr).await?;
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await?;
            io::Result::Ok(got)
        });
        let (accepted, _) = listener.accept().await?;
        let mut conn = OneWrite::new(accepted);
        let mut sent = Vec::new();
        for i in 0..40u32 {
            // Small frames and pieces past the hold limit, as h2 hands them over.
            let piece: Vec<u8> = (0..(i as usize * 3_001) % 20_000 + 1)
                .map(|b| (b as u32 ^ i) as u8)
                .collect();
            conn.write_all(&piece).await?;
            sent.extend_from_slice(&piece);
            if i % 7 == 6 {
                conn.flush().await?;
            }
        }
        conn.shutdown().await?;
        drop(conn);
        let got = client.await.map_err(io::Error::other)??;
        assert_eq!(got.len(), sent.len());
        assert!(got == sent, "bytes arrived changed or out of order");
        Ok(())
    }
}
