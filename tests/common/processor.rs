//! A payment processor for tests: real HTTP (hyper), over TLS
//! (tokio-rustls) when asked, on a free loopback port.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use super::tls::TestCerts;

/// A POST the processor received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    pub body: Value,
}

/// What the processor answers to the n-th POST (from 0) and its JSON: a
/// status code and a body, or `None` to say nothing for [`SILENCE`].
pub type Reply = Arc<dyn Fn(usize, &Value) -> Option<(StatusCode, String)> + Send + Sync>;

/// How long a silent answer keeps the client waiting before the
/// connection is closed: longer than the tests' timeouts.
pub const SILENCE: Duration = Duration::from_secs(3);

/// How a [`TestProcessor`] serves.
#[derive(Clone)]
pub struct Serve {
    /// `tls[n]` serves the n-th connection (the last one, the rest); none:
    /// plain HTTP.
    pub tls: Vec<TlsAcceptor>,
    /// `false` closes each connection after one answer.
    pub keep_alive: bool,
    /// Waited before each answer, once the request is counted.
    pub delay: Duration,
}

impl Default for Serve {
    fn default() -> Serve {
        Serve {
            tls: Vec::new(),
            keep_alive: true,
            delay: Duration::ZERO,
        }
    }
}

/// An HTTP(S) payment processor on a free loopback port, served by hyper
/// on its own runtime until dropped. It counts the TCP connections it
/// accepts and keeps every POST; answers are streamed in two chunks with
/// no Content-Length (chunked), on keep-alive connections.
pub struct TestProcessor {
    pub url: String,
    connections: Arc<AtomicUsize>,
    posts: Arc<Mutex<Vec<Seen>>>,
    _runtime: tokio::runtime::Runtime,
}

impl TestProcessor {
    /// Plain HTTP.
    pub fn http(reply: Reply) -> TestProcessor {
        TestProcessor::start(Serve::default(), reply)
    }

    /// HTTPS with the server certificate of `certs`.
    pub fn https(certs: &TestCerts, reply: Reply) -> TestProcessor {
        let tls = vec![acceptor(certs)];
        TestProcessor::start(
            Serve {
                tls,
                ..Serve::default()
            },
            reply,
        )
    }

    /// Starts serving, as `serve` says.
    pub fn start(serve: Serve, reply: Reply) -> TestProcessor {
        let scheme = if serve.tls.is_empty() {
            "http"
        } else {
            "https"
        };
        let Serve {
            tls,
            keep_alive,
            delay,
        } = serve;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!(
            "{scheme}://{}/execute_transaction",
            listener.local_addr().unwrap()
        );
        let connections = Arc::new(AtomicUsize::new(0));
        let posts = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), posts.clone());
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let tls = tls.get(n.min(tls.len().saturating_sub(1))).cloned();
                let (seen, reply) = (seen.clone(), reply.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        answer(request, seen.clone(), reply.clone(), delay)
                    });
                    let http = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .clone();
                    // A client that refuses the certificate ends the
                    // handshake: nothing to serve.
                    match tls {
                        Some(tls) => {
                            if let Ok(stream) = tls.accept(tcp).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                        }
                    }
                });
            }
        });
        TestProcessor {
            url,
            connections,
            posts,
            _runtime: runtime,
        }
    }

    /// The POSTs received so far.
    pub fn posts(&self) -> Vec<Seen> {
        self.posts.lock().unwrap().clone()
    }

    /// How many POSTs were received so far.
    pub fn requests(&self) -> usize {
        self.posts.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

type Chunks =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

/// Keeps a POST and answers it in two chunks; a HEAD (payctl's check before
/// it claims payments) gets an empty 200.
async fn answer(
    request: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    reply: Reply,
    delay: Duration,
) -> Result<Response<Chunks>, hyper::Error> {
    let stream = |chunks: Vec<Bytes>| {
        StreamBody::new(futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok(Frame::data(c)))
                .collect::<Vec<_>>(),
        ))
    };
    if request.method() == Method::HEAD {
        return Ok(Response::new(stream(Vec::new())));
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (idempotency_key, content_type) = (header("idempotency-key"), header("content-type"));
    let bytes = request.into_body().collect().await?.to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let answer = {
        let mut seen = seen.lock().unwrap();
        let answer = reply(seen.len(), &body);
        seen.push(Seen {
            idempotency_key,
            content_type,
            body,
        });
        answer
    };
    tokio::time::sleep(delay).await;
    let Some((status, text)) = answer else {
        tokio::time::sleep(SILENCE).await;
        let mut hung_up = Response::new(stream(Vec::new()));
        *hung_up.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return Ok(hung_up);
    };
    let text = Bytes::from(text);
    let half = text.len() / 2;
    let mut response = Response::new(stream(vec![text.slice(..half), text.slice(half..)]));
    *response.status_mut() = status;
    Ok(response)
}

/// Serves the test certificate of `certs`, HTTP/1.1 only (so answers are
/// chunked and connections counted one request after another).
pub fn acceptor(certs: &TestCerts) -> TlsAcceptor {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.server_cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&certs.server_key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
