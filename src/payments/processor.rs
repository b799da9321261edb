//! Payment processors: a deterministic simulator and an HTTP processor.
//!
//! A processor either answers (`accepted`, `decline`, `error`) or fails for
//! a passing reason (timeout, connection refused, 5xx): then the payment
//! stays `unknown` and is tried again.

use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    /// One attempt. `Err` is a passing failure: no answer was had.
    pub async fn execute(&self, payment: &Payment) -> anyhow::Result<Answer> {
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

    async fn execute(&self, payment: &Payment) -> Answer {
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        Answer {
            status: self.decide(&payment.payment_id),
            detail: Some(format!("simulator seed {}", self.seed)),
        }
    }
}

/// POSTs the payment as JSON to an `http://` URL and reads
/// `{"status": "accepted"|"decline"|"error"}` (or seed 003's
/// `{"success": true|false}`) back.
#[derive(Debug, Clone)]
pub struct HttpProcessor {
    host: String,
    port: u16,
    path: String,
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
    /// Parses an `http://host[:port][/path]` URL.
    pub fn new(url: &str, timeout: Duration) -> anyhow::Result<HttpProcessor> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("processor URL {url:?} must start with http://"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse()
                    .with_context(|| format!("bad port in {url:?}"))?,
            ),
            None => (authority, 80),
        };
        anyhow::ensure!(!host.is_empty(), "no host in processor URL {url:?}");
        Ok(HttpProcessor {
            host: host.to_string(),
            port,
            path: path.to_string(),
            timeout,
        })
    }

    async fn execute(&self, payment: &Payment) -> anyhow::Result<Answer> {
        // The id goes into a header: never let CR/LF or the like through,
        // whoever wrote the record (`payments process` checks it first).
        crate::payments::check_id("payment_id", &payment.payment_id).map_err(anyhow::Error::msg)?;
        let body = serde_json::to_vec(&ProcessorRequest {
            payment_id: &payment.payment_id,
            user_id: &payment.user_id,
            plan: &payment.plan,
            amount: payment.amount,
            currency: &payment.currency,
            kind: payment.kind,
        })?;
        let exchange = async {
            let mut stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nIdempotency-Key: {}\r\nConnection: close\r\n\r\n",
                self.path,
                self.host,
                self.port,
                body.len(),
                payment.payment_id
            );
            let mut request = head.into_bytes();
            request.extend_from_slice(&body);
            stream.write_all(&request).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            anyhow::Ok(response)
        };
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("processor did not answer within {:?}", self.timeout))?
            .with_context(|| format!("calling the processor at {}:{}", self.host, self.port))?;
        parse_response(&response)
    }
}

/// Reads an HTTP response: 2xx with a status → an answer; 5xx, 429 or an
/// unreadable body → a passing failure; other 4xx → `error`.
fn parse_response(response: &[u8]) -> anyhow::Result<Answer> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("processor sent no HTTP response")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("processor sent no HTTP status")?;
    if code >= 500 || code == 429 {
        bail!("processor answered HTTP {code}");
    }
    if !(200..300).contains(&code) {
        return Ok(Answer {
            status: PaymentStatus::Error,
            detail: Some(format!("processor refused the request: HTTP {code}")),
        });
    }
    let value: serde_json::Value = serde_json::from_str(body.trim())
        .with_context(|| format!("processor answered {body:?}, not JSON"))?;
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
    fn reads_processor_responses() {
        let ok = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\n\r\n{\"status\":\"accepted\"}",
        )
        .unwrap();
        assert_eq!(ok.status, PaymentStatus::Accepted);
        let seed = parse_response(b"HTTP/1.0 200 OK\r\n\r\n{\"success\": false}").unwrap();
        assert_eq!(seed.status, PaymentStatus::Error);
        assert!(parse_response(b"HTTP/1.1 503 Busy\r\n\r\n").is_err());
        let refused = parse_response(b"HTTP/1.1 400 Bad\r\n\r\n").unwrap();
        assert_eq!(refused.status, PaymentStatus::Error);
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nnot json").is_err());
    }

    #[test]
    fn parses_processor_urls() {
        let p = HttpProcessor::new(
            "http://127.0.0.1:5001/execute_transaction",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.path.as_str()),
            ("127.0.0.1", 5001, "/execute_transaction")
        );
        assert!(HttpProcessor::new("https://x", Duration::from_secs(1)).is_err());
    }
}
