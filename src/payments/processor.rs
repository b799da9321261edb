//! Payment processors: a deterministic simulator and an HTTP processor.
//!
//! A processor either answers (`accepted`, `decline`, `error`), fails for
//! a passing reason (timeout, connection refused, 5xx): then the payment
//! stays `unknown` and is tried again, or cannot work as configured (an
//! untrusted certificate, a redirect): then the run stops.

use std::time::Duration;

use std::path::Path;

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::payments::{Payment, PaymentStatus};

/// A processor's answer: the payment status and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: PaymentStatus,
    pub detail: Option<String>,
}

/// Where payments are sent.
pub enum Processor {
    Simulator(Simulator),
    Http(HttpProcessor),
}

impl Processor {
    /// One attempt; `Err` says why no answer was had.
    pub async fn execute(&self, payment: &Payment) -> Result<Answer, Failure> {
        match self {
            Processor::Simulator(s) => Ok(s.execute(payment).await),
            Processor::Http(h) => h.execute(payment).await,
        }
    }
}

/// A processor that answers from a hash of (seed, payment id): the same
/// seed and payment give the same answer on every run.
#[derive(Debug, Clone)]
pub struct Simulator {
    pub seed: u64,
    /// Share of payments accepted, 0..=1.
    pub accept_rate: f64,
    /// Share declined; the rest are errors.
    pub decline_rate: f64,
    pub latency: Duration,
}

impl Simulator {
    /// Checks the rates.
    pub fn new(
        seed: u64,
        accept_rate: f64,
        decline_rate: f64,
        latency: Duration,
    ) -> anyhow::Result<Simulator> {
        let share = 0.0..=1.0;
        if !share.contains(&accept_rate)
            || !share.contains(&decline_rate)
            || accept_rate + decline_rate > 1.0
        {
            bail!(
                "--accept-rate and --decline-rate must be between 0 and 1 and add up to at most 1"
            );
        }
        Ok(Simulator {
            seed,
            accept_rate,
            decline_rate,
            latency,
        })
    }

    /// The answer for a payment id, without waiting.
    pub fn decide(&self, payment_id: &str) -> PaymentStatus {
        // FNV-1a over the seed and the id, mixed, then the top 53 bits as a fraction.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.seed.to_le_bytes().iter().chain(payment_id.as_bytes()) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // splitmix64's finalizer spreads FNV's bits evenly.
        hash ^= hash >> 30;
        hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        hash ^= hash >> 27;
        hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
        hash ^= hash >> 31;
        let draw = (hash >> 11) as f64 / (1u64 << 53) as f64;
        if draw < self.accept_rate {
            PaymentStatus::Accepted
        } else if draw < self.accept_rate + self.decline_rate {
            PaymentStatus::Decline
        } else {
            PaymentStatus::Error
        }
    }

    /// The answer for a payment id, without waiting for the latency.
    pub fn answer(&self, payment_id: &str) -> Answer {
        Answer {
            status: self.decide(payment_id),
            detail: Some(format!("simulator seed {}", self.seed)),
        }
    }

    async fn execute(&self, payment: &Payment) -> Answer {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        self.answer(&payment.payment_id)
    }
}

/// The simulator's flags, shared by `payments process` and `payments
/// simulate-processor`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulatorArgs {
    /// Simulator: the seed its answers follow.
    #[arg(long, env = "PAYCTL_SIMULATOR_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Simulator: share of payments accepted.
    #[arg(long, default_value_t = 0.8)]
    pub accept_rate: f64,
    /// Simulator: share declined, the rest are errors [default: 0.1, or
    /// what is left after --accept-rate if less].
    #[arg(long)]
    pub decline_rate: Option<f64>,
    /// Simulator: milliseconds each answer takes (at most one hour).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
}

/// The longest simulated latency: one hour.
const MAX_LATENCY_MS: u64 = 3_600_000;

impl SimulatorArgs {
    /// The simulator these flags describe, checked.
    pub fn simulator(&self) -> anyhow::Result<Simulator> {
        if self.latency_ms > MAX_LATENCY_MS {
            bail!(
                "--latency-ms must be at most {MAX_LATENCY_MS} (one hour), got {}",
                self.latency_ms
            );
        }
        Simulator::new(
            self.seed,
            self.accept_rate,
            self.decline_rate
                .unwrap_or((1.0 - self.accept_rate).clamp(0.0, 0.1)),
            Duration::from_millis(self.latency_ms),
        )
    }
}

/// Why one attempt got no answer.
#[derive(Debug)]
pub enum Failure {
    /// Timeout, refused connection, 5xx, 429, an unreadable answer: the
    /// payment stays `unknown` and is tried again.
    Passing(anyhow::Error),
    /// The processor cannot work as configured (a certificate payctl does
    /// not trust, TLS to a port that does not speak it, a URL that
    /// redirects): retrying cannot help, so the run stops.
    Misconfigured(anyhow::Error),
}

/// The most of an answer payctl reads: a processor's answer is a few
/// fields, and nothing that arrives is trusted to be small.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// POSTs the payment as JSON to an `http://` or `https://` URL and reads
/// `{"status": "accepted"|"decline"|"error"}` (or the subscription pipeline's
/// `{"success": true|false}`) back.
///
/// One client per run: its pool keeps connections alive between payments
/// (HTTP/1.1 keep-alive, or HTTP/2 where the processor offers it). Proxies
/// come from `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY`.
#[derive(Debug, Clone)]
pub struct HttpProcessor {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as messages show it: no user, password or query, which may
    /// hold credentials.
    shown: String,
    /// The most one attempt may take, answer included.
    pub timeout: Duration,
}

#[derive(Serialize)]
struct ProcessorRequest<'a> {
    payment_id: &'a str,
    user_id: &'a str,
    plan: &'a str,
    amount: crate::money::Decimal,
    currency: &'a str,
    kind: crate::payments::PaymentKind,
}

impl HttpProcessor {
    /// Checks the URL and builds the run's client. `ca_file`: PEM
    /// certificates trusted in addition to the system's roots.
    pub fn new(
        url: &str,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> anyhow::Result<HttpProcessor> {
        // The URL is not echoed: it may carry a password or a token.
        let url = reqwest::Url::parse(url)
            .map_err(|e| anyhow::anyhow!("--processor-url is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!(
                "--processor-url must start with http:// or https://, not {}://",
                url.scheme()
            );
        }
        if url.host_str().is_none_or(str::is_empty) {
            bail!("--processor-url has no host");
        }
        let shown = shown(&url);
        let extra_roots = match ca_file {
            Some(path) => read_ca_file(path)?,
            None => Vec::new(),
        };
        // reqwest is built without a crypto provider of its own (aws-lc);
        // ring is. Installing fails only when one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = reqwest::Client::builder()
            .user_agent(concat!("payctl/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout)
            // A redirected POST is a payment sent where nobody configured
            // it, or turned into a GET: never follow one (see `redirected`).
            .redirect(reqwest::redirect::Policy::none());
        let builder = if url.scheme() == "https" {
            // The system's roots (SSL_CERT_FILE and SSL_CERT_DIR are
            // honoured) plus the private CA.
            extra_roots
                .into_iter()
                .fold(builder, reqwest::ClientBuilder::add_root_certificate)
        } else {
            // No TLS with the processor: a machine without system roots
            // (a bare container) must still reach an http:// processor.
            builder.tls_certs_only(extra_roots)
        };
        let client = builder
            .build()
            .map_err(|e| anyhow::Error::new(e.without_url()))
            .context("setting up the processor's HTTP client")?;
        Ok(HttpProcessor {
            client,
            url,
            shown,
            timeout,
        })
    }

    /// The URL as messages show it.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// One request that charges nothing (HEAD), made before any payment is
    /// claimed: a processor that cannot work as configured stops the run
    /// while every payment is still as it was. One that does not answer
    /// now is only logged: payments are claimed and retried as usual.
    pub async fn check(&self) -> anyhow::Result<()> {
        let probe = self.client.head(self.url.clone()).send();
        let failure = match tokio::time::timeout(self.timeout, probe).await {
            Err(_) => Failure::Passing(anyhow::anyhow!("no answer within {:?}", self.timeout)),
            Ok(Ok(response)) if response.status().is_redirection() => {
                Failure::Misconfigured(self.redirected(&response))
            }
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => self.failure(e),
        };
        match failure {
            Failure::Misconfigured(e) => Err(anyhow::anyhow!("{e:#}; no payment was claimed")),
            Failure::Passing(e) => {
                tracing::warn!(
                    "the processor at {} does not answer now, payments are tried as usual: {e:#}",
                    self.shown
                );
                Ok(())
            }
        }
    }

    async fn execute(&self, payment: &Payment) -> Result<Answer, Failure> {
        // The id goes into a header: never let CR/LF or the like through,
        // whoever wrote the record (`payments process` checks it first).
        crate::payments::check_id("payment_id", &payment.payment_id)
            .map_err(|e| Failure::Passing(anyhow::Error::msg(e)))?;
        let request = ProcessorRequest {
            payment_id: &payment.payment_id,
            user_id: &payment.user_id,
            plan: &payment.plan,
            amount: payment.amount,
            currency: &payment.currency,
            kind: payment.kind,
        };
        let exchange = async {
            let mut response = self
                .client
                .post(self.url.clone())
                .header("Idempotency-Key", &payment.payment_id)
                .json(&request)
                .send()
                .await
                .map_err(|e| self.failure(e))?;
            let code = response.status();
            if code.is_redirection() {
                return Err(Failure::Misconfigured(self.redirected(&response)));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(e))? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(Failure::Passing(anyhow::anyhow!(
                        "the processor's answer is over {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            parse_answer(code.as_u16(), &body).map_err(Failure::Passing)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::Passing(anyhow::anyhow!(
                    "processor did not answer within {:?}",
                    self.timeout
                )))
            })
    }

    /// Sorts a failed exchange: TLS failing is configuration, the rest
    /// (refused, reset, DNS, a broken body) passes.
    fn failure(&self, error: reqwest::Error) -> Failure {
        // reqwest's message names the URL; ours names it without secrets.
        let error = error.without_url();
        match tls_failure(&error) {
            Some(rustls::Error::InvalidCertificate(why)) => {
                Failure::Misconfigured(anyhow::anyhow!(
                "the processor at {} presented a TLS certificate payctl does not trust ({why:?}); \
                 trust its CA with --processor-ca-file",
                self.shown
            ))
            }
            Some(tls) => Failure::Misconfigured(anyhow::anyhow!(
                "TLS with the processor at {} failed ({tls}); check the URL's scheme and port",
                self.shown
            )),
            None => Failure::Passing(
                anyhow::Error::new(error)
                    .context(format!("calling the processor at {}", self.shown)),
            ),
        }
    }

    /// The error for an answer that sends the payment elsewhere.
    fn redirected(&self, response: &reqwest::Response) -> anyhow::Error {
        let to = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| self.url.join(l).ok())
            .map_or_else(|| "elsewhere".to_string(), |u| shown(&u));
        anyhow::anyhow!(
            "the processor at {} redirects (HTTP {}) to {to}: set --processor-url to where it should go",
            self.shown,
            response.status().as_u16()
        )
    }
}

/// A URL without its user, password, query and fragment.
fn shown(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    // Only URLs that cannot have a user (`data:`) refuse these; ours can.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

/// The certificates of a PEM file, at least one.
fn read_ca_file(path: &Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading --processor-ca-file {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| anyhow::anyhow!("--processor-ca-file {}: {e}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "--processor-ca-file {} holds no PEM certificate",
            path.display()
        );
    }
    Ok(certs)
}

/// The TLS error somewhere in an error's chain. tokio-rustls wraps it in an
/// `io::Error`, whose `source()` skips what it wraps: look inside those.
fn tls_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            if let Some(tls) = tls_failure(inner) {
                return Some(tls);
            }
        }
        next = error.source();
    }
    None
}

/// Reads an answer: 2xx with a status → an answer; 5xx, 429 or an
/// unreadable body → `Err`, a passing failure; other 4xx → `error`.
fn parse_answer(code: u16, body: &[u8]) -> anyhow::Result<Answer> {
    if code >= 500 || code == 429 {
        bail!("processor answered HTTP {code}");
    }
    if !(200..300).contains(&code) {
        return Ok(Answer {
            status: PaymentStatus::Error,
            detail: Some(format!("processor refused the request: HTTP {code}")),
        });
    }
    let value: serde_json::Value = serde_json::from_slice(body).with_context(|| {
        format!(
            "processor answered {:?}, not JSON",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )
    })?;
    let status = match (
        value.get("status").and_then(|s| s.as_str()),
        value.get("success"),
    ) {
        (Some("accepted" | "success" | "ok"), _) => PaymentStatus::Accepted,
        (Some("decline" | "declined"), _) => PaymentStatus::Decline,
        (Some("error" | "failed"), _) => PaymentStatus::Error,
        (None, Some(serde_json::Value::Bool(true))) => PaymentStatus::Accepted,
        (None, Some(serde_json::Value::Bool(false))) => PaymentStatus::Error,
        _ => bail!("processor answered {value}, which has no status payctl knows"),
    };
    Ok(Answer {
        status,
        detail: value
            .get("message")
            .and_then(|m| m.as_str())
            .map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulator_is_deterministic_and_follows_its_rates() {
        let sim = Simulator::new(7, 0.6, 0.3, Duration::ZERO).unwrap();
        let ids: Vec<String> = (0..2000).map(|i| format!("p{i}")).collect();
        let first: Vec<PaymentStatus> = ids.iter().map(|id| sim.decide(id)).collect();
        let again: Vec<PaymentStatus> = ids.iter().map(|id| sim.decide(id)).collect();
        assert_eq!(first, again);
        let accepted = first
            .iter()
            .filter(|s| **s == PaymentStatus::Accepted)
            .count();
        let declined = first
            .iter()
            .filter(|s| **s == PaymentStatus::Decline)
            .count();
        assert!((1080..1320).contains(&accepted), "{accepted}");
        assert!((480..720).contains(&declined), "{declined}");
        let other_seed = Simulator::new(8, 0.6, 0.3, Duration::ZERO).unwrap();
        assert_ne!(
            first,
            ids.iter()
                .map(|id| other_seed.decide(id))
                .collect::<Vec<_>>()
        );
        assert!(Simulator::new(1, 0.8, 0.3, Duration::ZERO).is_err());
    }

    #[test]
    fn reads_processor_answers() {
        let ok = parse_answer(200, br#"{"status":"accepted","message":"fine"}"#).unwrap();
        assert_eq!(
            ok,
            Answer {
                status: PaymentStatus::Accepted,
                detail: Some("fine".into())
            }
        );
        // The subscription pipeline's answer.
        let seed = parse_answer(200, br#"{"success": false}"#).unwrap();
        assert_eq!(seed.status, PaymentStatus::Error);
        assert_eq!(
            parse_answer(201, br#"{"success": true}"#).unwrap().status,
            PaymentStatus::Accepted
        );
        assert_eq!(
            parse_answer(200, br#"{"status":"declined"}"#)
                .unwrap()
                .status,
            PaymentStatus::Decline
        );
        // Passing: the processor is busy, or said something unreadable.
        for (code, body) in [
            (503, &b""[..]),
            (500, br#"{"status":"accepted"}"#),
            (429, b""),
            (200, b"not json"),
            (200, b""),
            (200, br#"{"status":"maybe"}"#),
        ] {
            assert!(parse_answer(code, body).is_err(), "{code} {body:?}");
        }
        // Refused outright: the payment's answer is `error`.
        for code in [400, 404, 422] {
            let refused = parse_answer(code, b"").unwrap();
            assert_eq!(refused.status, PaymentStatus::Error, "{code}");
        }
    }

    #[test]
    fn checks_processor_urls_and_hides_their_secrets() {
        let timeout = Duration::from_secs(1);
        let p =
            HttpProcessor::new("http://127.0.0.1:5001/execute_transaction", None, timeout).unwrap();
        assert_eq!(p.url(), "http://127.0.0.1:5001/execute_transaction");
        let p = HttpProcessor::new(
            "https://user:s3cret@pay.example:8443/charge?token=t0k#x",
            None,
            timeout,
        )
        .unwrap();
        assert_eq!(p.url(), "https://pay.example:8443/charge");
        for (bad, why) in [
            (
                "ftp://x/y",
                "must start with http:// or https://, not ftp://",
            ),
            ("localhost:5001/pay", "must start with http:// or https://"),
            ("127.0.0.1:5001/pay", "is not a URL"),
            ("http://", "is not a URL"),
            ("no url at all", "is not a URL"),
        ] {
            let e = format!("{:#}", HttpProcessor::new(bad, None, timeout).unwrap_err());
            assert!(e.contains(why), "{bad}: {e}");
        }
        let e = HttpProcessor::new("https://u:s3cret@/x", None, timeout).unwrap_err();
        assert!(!format!("{e:#}").contains("s3cret"), "{e:#}");
        let missing = Path::new("/nonexistent/ca.pem");
        let e = HttpProcessor::new("https://x/", Some(missing), timeout).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("reading --processor-ca-file /nonexistent/ca.pem"),
            "{e:#}"
        );
    }
}
