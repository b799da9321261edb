//! Every compression codec, both ways: batches another client compressed
//! with zstd, lz4, gzip or snappy are read by `topics consume` and `notify
//! consume`; `-X compression.type=zstd` makes payctl's own writes zstd
//! batches (checked on the wire); and a batch nobody can decode stops a
//! reader with one line naming where it is, committing nothing past it.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{open_account, read_topic, redis, unique, Pipeline};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{
    encode_request_header_into_buffer, Decodable, Encodable, HeaderVersion, StrBytes,
};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const CODECS: [&str; 4] = ["zstd", "lz4", "gzip", "snappy"];

/// One request/response exchange with the broker, in the Kafka wire format
/// (`kafka-protocol` encodes and decodes; only the size prefix is framing).
fn exchange<Req: Encodable + HeaderVersion, Resp: Decodable + HeaderVersion>(
    key: ApiKey,
    version: i16,
    request: &Req,
) -> Resp {
    let address = common::brokers().split(',').next().unwrap().to_string();
    let mut stream = TcpStream::connect(address).expect("connecting to the broker");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut body = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("codecs-test")));
    encode_request_header_into_buffer(&mut body, &header).unwrap();
    request.encode(&mut body, version).unwrap();
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).unwrap();
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("a response");
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).unwrap();
    let mut response = Bytes::from(response);
    ResponseHeader::decode(&mut response, Resp::header_version(version)).unwrap();
    Resp::decode(&mut response, version).unwrap()
}

/// The compression of every batch in partition `partition` of `topic`, as
/// the broker holds them.
fn batch_codecs(topic: &str, partition: i32) -> Vec<Compression> {
    let request = FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(50 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(0)
                .with_partition_max_bytes(50 << 20)])]);
    let response: FetchResponse = exchange(ApiKey::Fetch, 4, &request);
    let mut records = response.responses[0].partitions[0]
        .records
        .clone()
        .unwrap_or_default();
    let mut codecs = Vec::new();
    while records.has_remaining() {
        let seen = std::cell::Cell::new(Compression::None);
        let decoded = RecordBatchDecoder::decode_with_custom_compression(
            &mut records,
            Some(|_: &mut Bytes, compression| {
                // Only the codec is wanted: no need to decompress.
                seen.set(compression);
                anyhow::bail!("not decompressed")
            }),
        );
        codecs.push(decoded.map_or(seen.get(), |set| set.compression));
    }
    codecs
}

/// Every batch of every partition of `topic`.
fn topic_codecs(topic: &str) -> Vec<Compression> {
    (0..3).flat_map(|p| batch_codecs(topic, p)).collect()
}

fn produce_with(topic: &str, codec: &str, values: &[String]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("compression.type", codec)
        .set("linger.ms", "50")
        .create()
        .expect("test producer");
    for value in values {
        producer
            .send(BaseRecord::to(topic).key("k").payload(value))
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

#[test]
fn batches_of_every_codec_from_another_client_are_read() {
    let p = Pipeline::new();
    let mut wanted = Vec::new();
    for codec in CODECS {
        let user = unique(&format!("codec-{codec}"));
        // Compressible values, several to a batch: librdkafka sends a batch
        // uncompressed when compressing does not make it smaller.
        let values: Vec<String> = (0..20)
            .map(|i| {
                serde_json::json!({
                    "transaction_id": format!("{codec}-{i}-{}", "x".repeat(200)),
                    "user_id": user,
                    "status": "completed",
                })
                .to_string()
            })
            .collect();
        produce_with(&p.transactions, codec, &values);
        wanted.push((codec, user, values));
    }
    let codecs = topic_codecs(&p.transactions);
    for codec in [
        Compression::Zstd,
        Compression::Lz4,
        Compression::Gzip,
        Compression::Snappy,
    ] {
        assert!(codecs.contains(&codec), "no {codec:?} batch in {codecs:?}");
    }

    let run = p
        .payctl(&[
            "topics",
            "consume",
            &p.transactions,
            "--from-beginning",
            "--raw",
            "-n",
            "80",
        ])
        .expect(0);
    let mut read: Vec<&str> = run.stdout.lines().collect();
    let mut all: Vec<&str> = wanted
        .iter()
        .flat_map(|(_, _, v)| v.iter().map(String::as_str))
        .collect();
    read.sort();
    all.sort();
    assert_eq!(read, all);

    let summary = p
        .payctl(&["notify", "consume", "--until-idle", "3", "--output", "json"])
        .expect(0)
        .json();
    assert_eq!(summary["processed"], 80, "{summary}");
    let mut con = redis();
    for (codec, user, values) in &wanted {
        let items: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("notifications:{user}"))
            .arg(0)
            .arg(-1)
            .query(&mut con)
            .unwrap();
        assert_eq!(items.len(), values.len(), "{codec}: {items:?}");
        let first: serde_json::Value = serde_json::from_str(&items[0]).unwrap();
        assert!(
            first["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("Transaction {codec}-")),
            "{first}"
        );
    }
}

#[test]
fn payctl_writes_zstd_when_asked() {
    let p = Pipeline::new();
    let zstd = ["-X", "compression.type=zstd"];
    let with = |args: &[&str]| {
        let mut all = zstd.to_vec();
        all.extend_from_slice(args);
        p.payctl(&all)
    };

    // topics produce: values from stdin, one per line.
    let topic = unique("zstd-produce");
    p.payctl(&["topics", "create", &topic]).expect(0);
    let values: Vec<String> = (0..30)
        .map(|i| format!("value {i} {}", "z".repeat(100)))
        .collect();
    let mut child = {
        let mut args = zstd.to_vec();
        args.extend_from_slice(&["topics", "produce", &topic]);
        p.spawn_with_stdin(&args)
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(values.join("\n").as_bytes())
        .unwrap();
    common::finish(child).expect(0);
    let mut read: Vec<String> = read_topic(&topic).into_iter().map(|(_, v)| v).collect();
    read.sort();
    let mut sorted = values.clone();
    sorted.sort();
    assert_eq!(read, sorted);
    let codecs = topic_codecs(&topic);
    assert!(
        !codecs.is_empty() && codecs.iter().all(|c| *c == Compression::Zstd),
        "{codecs:?}"
    );

    // Bulk initiate, then the worker's outcome events.
    let alice = open_account(&p, "zstd-alice", "1000.00");
    let bob = open_account(&p, "zstd-bob", "0");
    let file = std::env::temp_dir().join(unique("zstd-batch"));
    let lines: Vec<String> = (0..25)
        .map(|_| serde_json::json!({"from": alice, "to": bob, "amount": "1.00"}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    with(&["transfer", "initiate", "--file", file.to_str().unwrap()]).expect(0);
    let initiated = read_topic(&p.transfers);
    assert_eq!(initiated.len(), 25);
    assert!(initiated.iter().all(|(_, v)| v.contains(&alice)));
    let codecs = topic_codecs(&p.transfers);
    assert!(
        !codecs.is_empty() && codecs.iter().all(|c| *c == Compression::Zstd),
        "{codecs:?}"
    );

    let summary = with(&[
        "transfer",
        "process",
        "--until-idle",
        "2",
        "--output",
        "json",
    ])
    .expect(0)
    .json();
    assert_eq!(summary["processed"], 25, "{summary}");
    // One event per party: the debit and the credit.
    let events = read_topic(&p.transactions);
    assert_eq!(events.len(), 50);
    assert!(
        events.iter().all(|(_, v)| v.contains("completed")),
        "{events:?}"
    );
    let codecs = topic_codecs(&p.transactions);
    assert!(
        !codecs.is_empty() && codecs.iter().all(|c| *c == Compression::Zstd),
        "{codecs:?}"
    );
    let _ = std::fs::remove_file(file);
}

/// Writes one batch to `topic`/0 that says it is zstd-compressed but holds
/// garbage: its CRC is right, so only decompressing it fails.
fn produce_undecodable(topic: &str) {
    let records = [Record {
        transactional: false,
        control: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 0,
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::from_static(b"never readable")),
        headers: Default::default(),
    }];
    let mut batch = BytesMut::new();
    RecordBatchEncoder::encode_with_custom_compression(
        &mut batch,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::Zstd,
        },
        Some(|_: &mut BytesMut, out: &mut BytesMut, _: Compression| {
            out.put_slice(b"these bytes are not a zstd frame at all");
            Ok(())
        }),
    )
    .unwrap();
    let request = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(batch.freeze()))])]);
    let response: ProduceResponse = exchange(ApiKey::Produce, 3, &request);
    let partition = &response.responses[0].partition_responses[0];
    assert_eq!(partition.error_code, 0, "the broker refused the batch");
}

/// The offset `group` has committed on `topic`/0, if any.
fn committed(topic: &str, group: &str) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    match offsets.find_partition(topic, 0).unwrap().offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[test]
fn an_undecodable_batch_stops_readers_with_one_line_and_commits_nothing_past_it() {
    let p = Pipeline::new();
    let user = unique("undecodable");
    let good = |id: &str| {
        serde_json::json!({"transaction_id": id, "user_id": user, "status": "completed"})
            .to_string()
    };
    // Partition 0: a good event, the bad batch, another good event.
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", common::brokers())
        .create()
        .unwrap();
    let send = |value: String| {
        producer
            .send(
                BaseRecord::to(&p.transactions)
                    .partition(0)
                    .key("k")
                    .payload(&value),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(10)).unwrap();
    };
    send(good("before"));
    produce_undecodable(&p.transactions);
    send(good("after"));
    let bad_offset = 1;
    let place = format!(
        "cannot decode the batch at topic {} partition 0 offset {bad_offset} (",
        p.transactions
    );

    let run = p
        .payctl(&["notify", "consume", "--until-idle", "3"])
        .expect(2);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(run.stderr.contains(&place), "{}", run.stderr);
    let committed_offset = committed(&p.transactions, &p.group);
    assert!(
        committed_offset.is_none_or(|o| o <= bad_offset),
        "committed {committed_offset:?}, past the bad batch at {bad_offset}"
    );
    // Nothing past the bad batch was applied. (The message before it may
    // or may not have been: a fatal consumer error drops the batch in hand
    // uncommitted, to be delivered again.)
    let items: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("notifications:{user}"))
        .arg(0)
        .arg(-1)
        .query(&mut redis())
        .unwrap();
    assert!(!items.iter().any(|i| i.contains("after")), "{items:?}");

    let audit = unique("audit");
    for extra in [&[][..], &["--group", &audit][..]] {
        let mut args = vec!["topics", "consume", &p.transactions, "--from-beginning"];
        args.extend_from_slice(extra);
        let run = p.payctl(&args).expect(2);
        let printed: Vec<&str> = run.stdout.lines().collect();
        assert_eq!(printed.len(), 1, "{}", run.stdout);
        assert!(printed[0].contains("before"), "{}", run.stdout);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(&place), "{}", run.stderr);
    }
    let audit = committed(&p.transactions, &audit);
    assert!(audit.is_none_or(|o| o <= bad_offset), "committed {audit:?}");
}
