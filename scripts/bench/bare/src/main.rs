//! A bare hyper server for the benchmark: `200 {"status":"ok"}` to every request, no logging,
//! no checks. It reads the same `HOST`, `PORT` and `WORKERS` as the api and exits 0 on
//! SIGTERM, so the benchmark starts and stops it like the api.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.into())
}

fn main() {
    let host = env("HOST", "127.0.0.1")
        .parse()
        .expect("HOST is an address");
    let port = env("PORT", "8000").parse().expect("PORT is a number");
    let workers: usize = env("WORKERS", "1").parse().expect("WORKERS is a number");
    let mut runtime = match workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if workers > 1 {
        runtime.worker_threads(workers);
    }
    let runtime = runtime.enable_all().build().expect("a runtime");
    runtime.block_on(serve(SocketAddr::new(host, port)));
    // Open connections are dropped with the runtime.
    runtime.shutdown_background();
}

async fn serve(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).await.expect("the address is free");
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => continue,
            },
            _ = term.recv() => return,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_req: Request<Incoming>| async {
                let mut resp = Response::new(Full::new(Bytes::from_static(br#"{"status":"ok"}"#)));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok::<_, Infallible>(resp)
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
