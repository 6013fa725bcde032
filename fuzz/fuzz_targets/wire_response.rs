//! The upstream response reader (`src/wire.rs`), fed any bytes as one upstream connection's answers:
//! each response head, its body by its framing, and the next response on the same connection when the
//! last one left it reusable (so the names a connection keeps from one head to the next are
//! exercised). Over a real loopback socket: the reader owns a `TcpStream`. Properties: it never
//! panics or hangs; it never yields more body bytes than the upstream sent; a body framed by
//! `Content-Length` that ends yields exactly that many; a connection is handed back only once its
//! body has ended.
#![no_main]

use std::future::poll_fn;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tiergate::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Rig {
    rt: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("loopback listener");
        Rig { rt, listener }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, answers)) = data.split_first() else { return };
    let method = if pick & 1 == 0 { http::Method::GET } else { http::Method::HEAD };
    // The headers into a map, or kept as sent (tiergate's own HTTP/1.1 path asks for that).
    let raw = pick & 2 != 0;
    let rig = rig();
    rig.rt.block_on(async {
        let addr = rig.listener.local_addr().expect("address");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut upstream, _) = rig.listener.accept().await.expect("accept");
        let sent = answers.to_vec();
        // The upstream: all its bytes, then its half of the connection closed; what the reader
        // writes is read and dropped until the reader hangs up (so no reset cuts the bytes short).
        let upstream = tokio::spawn(async move {
            let _ = upstream.write_all(&sent).await;
            let _ = upstream.shutdown().await;
            let mut sink = [0u8; 4096];
            while matches!(upstream.read(&mut sink).await, Ok(n) if n > 0) {}
        });
        let mut request = http::Request::new(()).into_parts().0;
        request.method = method.clone();
        request.headers.insert(http::header::HOST, http::HeaderValue::from_static("fuzz"));
        let mut conn = wire::Conn::new(client);
        let mut body_bytes = 0usize;
        for _ in 0..64 {
            if conn.write_head(tiergate::wire::Head::Parts(&request)).await.is_err() {
                break;
            }
            let Ok((_head, mut body)) = conn.read_head(&method, raw).await else { break };
            let framed = body.exact_len();
            let mut this_body = 0u64;
            let ended = loop {
                match poll_fn(|cx| body.poll_data(cx)).await {
                    Some(Ok(piece)) => this_body += piece.len() as u64,
                    Some(Err(_)) => break false,
                    None => break true,
                }
            };
            body_bytes += this_body as usize;
            assert!(body_bytes <= answers.len(), "more body bytes ({body_bytes}) than the upstream sent");
            if ended && let Some(n) = framed {
                assert_eq!(this_body, n, "a Content-Length body that ended yields exactly its length");
            }
            match body.take_conn() {
                Some(next) => {
                    assert!(ended && body.is_end(), "a connection handed back before its body ended");
                    conn = next;
                }
                None => break,
            }
        }
        let _ = upstream.await;
    });
});
