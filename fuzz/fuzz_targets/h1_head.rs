//! Which request heads tiergate's own HTTP/1.1 path takes (`src/h1.rs`), against hyper's server
//! (which serves everything else, and served every request before): any head that path takes must be
//! one hyper's server reads as the same request: same method, path, query and headers, no body, and
//! the same `Connection: close`. A head hyper would refuse or read otherwise, taken by the own path,
//! would be a request the two paths disagree on (a smuggling risk): that is the finding.
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What hyper's server read: method, path, query, headers (lower-cased names, sorted), body length,
/// and whether it will close the connection after answering.
type Seen = (String, String, Option<String>, Vec<(String, Vec<u8>)>, usize);

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime"))
}

fuzz_target!(|data: &[u8]| {
    let Some(head) = tiergate::h1::taken_head(data, 16 * 1024) else { return };
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let record = Arc::clone(&seen);
    let keep_alive = runtime().block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let record = Arc::clone(&record);
            async move {
                let first = record.lock().expect("lock").is_none();
                let mut headers: Vec<(String, Vec<u8>)> =
                    req.headers().iter().map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec())).collect();
                headers.sort();
                let (method, path, query) =
                    (req.method().to_string(), req.uri().path().to_string(), req.uri().query().map(str::to_string));
                let body = req.into_body().collect().await.map_or(usize::MAX, |b| b.to_bytes().len());
                if first {
                    *record.lock().expect("lock") = Some((method, path, query, headers, body));
                }
                Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
            }
        });
        let conn =
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(server), service));
        // The head, then a second request: a connection kept alive answers both; one the first
        // request asked to close ends after the first answer.
        client.write_all(&data[..head.len]).await.expect("write");
        client.write_all(b"GET /next HTTP/1.1\r\nHost: n\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        let read = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            loop {
                if answer.windows(4).filter(|w| w == b"\r\n\r\n").count() >= 2 {
                    return true;
                }
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        conn.abort();
        read.unwrap_or_else(|_| panic!("hyper's server neither answered twice nor closed"))
    });
    let got = seen.lock().expect("lock").take();
    let Some((method, path, query, headers, body)) = got else {
        panic!("hyper's server did not read {:?} as a request", String::from_utf8_lossy(&data[..head.len]));
    };
    let mut sent: Vec<(String, Vec<u8>)> =
        head.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect();
    sent.sort();
    assert_eq!(method, head.method.as_str(), "method");
    assert_eq!(path, head.path, "path");
    assert_eq!(query, head.query, "query");
    assert_eq!(headers, sent, "headers");
    assert_eq!(body, 0, "a taken head has no body");
    assert_eq!(!keep_alive, head.close, "Connection: close read alike");
});
