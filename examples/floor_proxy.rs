//! The floor under any tokio HTTP/1.1 proxy hop, for `scripts/bench.sh --only floor,...`: not
//! tiergate, and not a proxy to use for anything else. Per client connection it opens one upstream
//! connection; per request it reads the request head, writes it to the upstream as it came, reads the
//! response head and its `Content-Length` body, and writes them back as they came. No header is
//! parsed into a map, nothing is added, nothing is limited: the same four socket calls per request as
//! nginx and tiergate make, and as little user-space work around them as tokio allows. It serves only
//! what the benchmark sends (keep-alive GETs without bodies, answered with `Content-Length`).
//!
//! Usage: floor_proxy LISTEN_ADDR UPSTREAM_ADDR   (one thread)
#![forbid(unsafe_code)]

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: floor_proxy LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(64);
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(&listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let _ = serve(client, &upstream).await;
            });
        }
    })
}

async fn serve(mut client: TcpStream, upstream: &str) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (mut req, mut resp) = (Vec::with_capacity(8192), Vec::with_capacity(16384));
    loop {
        let Some(end) = read_head(&mut client, &mut req).await? else { return Ok(()) };
        up.write_all(&req[..end]).await?;
        req.drain(..end);
        let Some(head) = read_head(&mut up, &mut resp).await? else { return Ok(()) };
        let whole = head + content_length(&resp[..head]);
        while resp.len() < whole {
            if up.read_buf(&mut resp).await? == 0 {
                return Ok(());
            }
        }
        client.write_all(&resp[..whole]).await?;
        resp.drain(..whole);
    }
}

/// Reads until `buf` holds a whole head; its length, or `None` at the end of the stream.
async fn read_head(from: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(at) = memchr::memmem::find(buf, b"\r\n\r\n") {
            return Ok(Some(at + 4));
        }
        if from.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// The `Content-Length` of a response head (0 when it has none).
fn content_length(head: &[u8]) -> usize {
    head.split(|&b| b == b'\n')
        .find_map(|line| {
            let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
            name.eq_ignore_ascii_case(b"content-length")
                .then(|| std::str::from_utf8(&value[1..]).ok()?.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}
