//! Every error has a class, and the class decides what a worker does.
//!
//! | class | examples | a worker |
//! |---|---|---|
//! | [`Class::Passing`] | connection refused or reset, timeouts, `LOADING`, `BUSY`, `TRYAGAIN`, broker transport errors, a full queue | retries the batch with backoff and commits nothing |
//! | [`Class::Permanent`] | the message's data breaks a script, `WRONGTYPE` on its keys, a record too large for the broker | dead-letters that message and processes its neighbours |
//! | [`Class::Fatal`] | authentication or authorization refused, a failed TLS handshake, a fatal idempotent-producer error, a topic deleted under the worker, a batch that cannot be decoded | commits what is finished, says so in one line, exits non-zero |
//!
//! An error payctl does not recognise is permanent: the worker isolates the
//! one message that causes it and dead-letters it, rather than retrying a
//! batch forever in silence.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Goes away by itself: retry later, commit nothing.
    Passing,
    /// Caused by one message: dead-letter it and move on.
    Permanent,
    /// The worker cannot go on: stop, non-zero.
    Fatal,
}

/// An error the worker must stop on, whatever caused it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FatalError(pub String);

/// Classifies an error by the first Redis or Kafka error in its chain.
pub fn classify(error: &anyhow::Error) -> Class {
    for cause in error.chain() {
        if cause.is::<FatalError>()
            || cause.is::<crate::kafka::AuthFailed>()
            || cause.is::<crate::kafka::Undecodable>()
        {
            return Class::Fatal;
        }
        if let Some(e) = cause.downcast_ref::<RedisError>() {
            return classify_redis(e);
        }
        if let Some(e) = cause.downcast_ref::<KafkaError>() {
            return classify_kafka(e);
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return classify_io(e);
        }
    }
    Class::Permanent
}

/// Whether a Redis Cluster refused a script or transaction because its
/// keys live in different hash slots (`CROSSSLOT`): nothing of it ran.
pub fn spans_slots(error: &anyhow::Error) -> bool {
    error.chain().any(|c| {
        c.downcast_ref::<RedisError>()
            .is_some_and(|e| e.kind() == ErrorKind::Server(ServerErrorKind::CrossSlot))
    })
}

/// What to say after a `CROSSSLOT` refusal.
pub const SPANS_SLOTS_HINT: &str = " (nothing was written: one step's Redis keys live in \
     different hash slots, which payctl's steps never ask for: a key written by another \
     service, or a bug; see README \"A Redis Cluster\")";

/// Redis: the connection and the server's passing states are passing; ACL
/// refusals are fatal; anything the server says about a command (a script
/// error, `WRONGTYPE`) is permanent for the message that sent it.
pub fn classify_redis(e: &RedisError) -> Class {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return Class::Passing;
    }
    // Inside a script, Redis reports a refused command or a full memory as
    // a plain `ERR` with the real cause in the text.
    let text = e.to_string();
    if text.contains("can't run this command") || text.contains("no permissions") {
        return Class::Fatal;
    }
    if text.contains("OOM command not allowed") || text.contains("MISCONF") {
        return Class::Passing;
    }
    match e.kind() {
        // A cluster refusing keys of several slots refuses every message
        // alike: not one message's fault, and no retry will change it.
        ErrorKind::AuthenticationFailed
        | ErrorKind::Server(ServerErrorKind::NoPerm | ServerErrorKind::CrossSlot) => Class::Fatal,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly
            | ServerErrorKind::NoScript
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        )
        | ErrorKind::Io
        | ErrorKind::Parse
        | ErrorKind::ClusterConnectionNotFound => Class::Passing,
        _ => match e.code() {
            // The server is busy (a long script), out of memory or cannot
            // persist: none of that is the message's fault.
            Some("BUSY" | "LOADING" | "OOM" | "MISCONF" | "NOREPLICAS" | "TRYAGAIN") => {
                Class::Passing
            }
            Some("NOAUTH" | "WRONGPASS" | "NOPERM") => Class::Fatal,
            _ => Class::Permanent,
        },
    }
}

/// Kafka: a record the broker will never take is permanent; a refused
/// login or a fenced or failed idempotent producer is fatal; the rest
/// (transport, timeouts, leader changes, full queues) passes.
pub fn classify_kafka(e: &KafkaError) -> Class {
    match e.rdkafka_error_code() {
        Some(code) => classify_kafka_code(code),
        None => Class::Passing,
    }
}

/// See [`classify_kafka`].
pub fn classify_kafka_code(code: RDKafkaErrorCode) -> Class {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidMessage
        | C::InvalidRecord
        | C::InvalidArgument
        | C::BadMessage => Class::Permanent,
        C::Fatal
        | C::Authentication
        | C::SaslAuthenticationFailed
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::SSL => Class::Fatal,
        _ => Class::Passing,
    }
}

fn classify_io(e: &std::io::Error) -> Class {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::PermissionDenied => Class::Fatal,
        K::InvalidData | K::InvalidInput => Class::Permanent,
        _ => Class::Passing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str, detail: &str) -> anyhow::Error {
        let reply = format!("-{code} {detail}\r\n");
        let e: RedisError = match redis::parse_redis_value(reply.as_bytes()).unwrap() {
            redis::Value::ServerError(e) => e.into(),
            other => panic!("not an error reply: {other:?}"),
        };
        anyhow::Error::new(e).context("applying a batch")
    }

    #[test]
    fn redis_errors_are_classified_by_code() {
        assert_eq!(
            classify(&server("WRONGTYPE", "Operation against a key")),
            Class::Permanent
        );
        assert_eq!(
            classify(&server("ERR", "user_script:3: bad argument")),
            Class::Permanent
        );
        assert_eq!(
            classify(&server("LOADING", "Redis is loading")),
            Class::Passing
        );
        assert_eq!(
            classify(&server("BUSY", "Redis is busy running a script")),
            Class::Passing
        );
        assert_eq!(
            classify(&server("TRYAGAIN", "Multiple keys request")),
            Class::Passing
        );
        assert_eq!(classify(&server("NOPERM", "no permissions")), Class::Fatal);
        let cross = server("CROSSSLOT", "Keys in request don't hash to the same slot");
        assert_eq!(classify(&cross), Class::Fatal, "not one message's fault");
        assert!(spans_slots(&cross));
        assert!(!spans_slots(&server(
            "WRONGTYPE",
            "Operation against a key"
        )));
        let in_script = "The user executing the script can't run this command or subcommand script: 1bd6, on @user_script:35.";
        assert_eq!(classify(&server("ERR", in_script)), Class::Fatal);
        let full = "OOM command not allowed when used memory > 'maxmemory'. script: 1bd6";
        assert_eq!(classify(&server("ERR", full)), Class::Passing);
        let refused: RedisError =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused").into();
        assert_eq!(classify(&anyhow::Error::new(refused)), Class::Passing);
    }

    #[test]
    fn kafka_errors_are_classified_by_code() {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(classify(&anyhow::anyhow!(too_large)), Class::Permanent);
        let fatal = KafkaError::MessageProduction(RDKafkaErrorCode::Fatal);
        assert_eq!(classify(&anyhow::anyhow!(fatal)), Class::Fatal);
        let auth = KafkaError::MessageProduction(RDKafkaErrorCode::SaslAuthenticationFailed);
        assert_eq!(classify(&anyhow::anyhow!(auth)), Class::Fatal);
        let transport = KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure);
        assert_eq!(classify(&anyhow::anyhow!(transport)), Class::Passing);
        let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
        assert_eq!(classify(&anyhow::anyhow!(timeout)), Class::Passing);
    }

    #[test]
    fn unknown_errors_are_permanent_and_marked_fatal_ones_fatal() {
        assert_eq!(classify(&anyhow::anyhow!("odd data")), Class::Permanent);
        let fatal = anyhow::Error::new(FatalError("topic deleted".into())).context("consuming");
        assert_eq!(classify(&fatal), Class::Fatal);
    }
}
