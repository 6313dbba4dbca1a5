//! Test-only exactly-once oracle: reads a partition's raw record batches
//! (read_uncommitted, control batches included) and keeps a transactional
//! record only if its producer's transaction ended with a COMMIT marker.
//! It applies the Kafka rule itself, because the test broker does not hide
//! aborted records from read_committed consumers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::{Record, RecordBatchDecoder};

const VERSION: i16 = 11;

fn fetch(
    stream: &mut TcpStream,
    topic: &str,
    partition: i32,
    offset: i64,
    correlation: i32,
) -> (Vec<Record>, i64) {
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Fetch as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("baton-oracle")));
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(8 << 20)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_current_leader_epoch(-1)
                        .with_fetch_offset(offset)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(4 << 20),
                ]),
        ]);
    let mut body = BytesMut::new();
    header
        .encode(&mut body, FetchRequest::header_version(VERSION))
        .expect("encode header");
    request.encode(&mut body, VERSION).expect("encode fetch");
    stream
        .write_all(&(body.len() as i32).to_be_bytes())
        .expect("send");
    stream.write_all(&body).expect("send");
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("response length");
    let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).expect("response");
    let mut b = Bytes::from(buf);
    ResponseHeader::decode(&mut b, FetchResponse::header_version(VERSION))
        .expect("response header");
    let response = FetchResponse::decode(&mut b, VERSION).expect("fetch response");
    let mut records = Vec::new();
    let mut high = 0;
    for t in response.responses {
        for p in t.partitions {
            // 3: the topic does not exist yet, so it holds nothing yet.
            if p.error_code == 3 {
                return (Vec::new(), 0);
            }
            assert_eq!(
                p.error_code, 0,
                "fetch {topic}/{partition} failed with error {}",
                p.error_code
            );
            high = p.high_watermark;
            if let Some(mut raw) = p.records {
                while raw.has_remaining() {
                    match RecordBatchDecoder::decode(&mut raw) {
                        Ok(set) => records.extend(set.records),
                        Err(_) => break, // a partial batch at the end of the response
                    }
                }
            }
        }
    }
    (records, high)
}

/// The records of `topic`/`partition` that a correct read_committed consumer sees.
pub fn committed(bootstrap: &str, topic: &str, partition: i32) -> Vec<Record> {
    scan(bootstrap, topic, partition).0
}

/// How many records of `topics` (partitions `0..partitions`) belonged to
/// transactions that did not commit.
pub fn aborted(bootstrap: &str, topics: &[String], partitions: i32) -> usize {
    topics
        .iter()
        .flat_map(|t| (0..partitions).map(move |p| (t, p)))
        .map(|(t, p)| scan(bootstrap, t, p).1)
        .sum()
}

/// Committed records, and how many records belonged to transactions that did not commit.
pub fn scan(bootstrap: &str, topic: &str, partition: i32) -> (Vec<Record>, usize) {
    let mut stream = TcpStream::connect(bootstrap).expect("oracle connects to the broker");
    let mut offset = 0;
    let mut out = Vec::new();
    let mut open: HashMap<i64, Vec<Record>> = HashMap::new();
    let mut dropped = 0;
    for n in 0.. {
        let (records, high) = fetch(&mut stream, topic, partition, offset, n);
        let before = offset;
        for r in records {
            if r.offset < offset {
                continue;
            }
            offset = r.offset + 1;
            if r.control {
                // Control record key: version (i16), type (i16): 0 = ABORT, 1 = COMMIT.
                let kind = r
                    .key
                    .as_ref()
                    .filter(|k| k.len() >= 4)
                    .map(|k| i16::from_be_bytes([k[2], k[3]]));
                let txn = open.remove(&r.producer_id).unwrap_or_default();
                if kind == Some(1) {
                    out.extend(txn);
                } else {
                    dropped += txn.len();
                }
            } else if r.transactional {
                open.entry(r.producer_id).or_default().push(r);
            } else {
                out.push(r);
            }
        }
        if offset >= high || offset == before {
            break;
        }
    }
    // Transactions still open at the end never committed.
    dropped += open.values().map(Vec::len).sum::<usize>();
    (out, dropped)
}
