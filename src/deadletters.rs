//! The dead-letter topic read back: every letter with its kind, reason and
//! origin, and the replay of chosen letters to where they came from, once
//! their cause is gone (a shard that was at its instance cap, a definition
//! deployed since, a bug fixed).
//!
//! A letter is replayed as the record it was: its key, payload and headers
//! (without the `baton.dlq.*` ones) to its origin topic and partition, so
//! baton processes it as if it arrived then. Events carry their ids, and an
//! instance ignores an event id it has seen, so replaying a letter whose
//! instance is still held changes nothing; once an instance has ended and
//! left retention, a replayed start event starts it again, so choose the
//! letters by offset (`from`, `to`) and replay each range once.

use crate::config::Config;
use crate::kafka::{self, Incoming, KafkaFailure, Outgoing};

/// One dead letter and where it came from.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// `baton.dlq.kind`: why, in one word (`instance-cap`, `undecodable`, …).
    pub kind: String,
    pub reason: String,
    pub origin_topic: Option<String>,
    pub origin_partition: Option<i32>,
    pub origin_offset: Option<i64>,
    /// The payload was cut to its first bytes (it was too large to copy).
    pub truncated: bool,
    pub record: Incoming,
}

/// Which letters: all of them unless narrowed.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only these kinds (empty: every kind).
    pub kinds: Vec<String>,
    /// Only this partition of the dead-letter topic.
    pub partition: Option<i32>,
    /// Only offsets at or after this one.
    pub from: Option<i64>,
    /// Only offsets before this one.
    pub to: Option<i64>,
}

impl Filter {
    fn admits(&self, d: &DeadLetter) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&d.kind))
            && self.partition.is_none_or(|p| p == d.partition)
            && self.from.is_none_or(|f| d.offset >= f)
            && self.to.is_none_or(|t| d.offset < t)
    }
}

fn header(m: &Incoming, name: &str) -> Option<String> {
    crate::wire::cloudevents::header(&m.headers, name).map(str::to_string)
}

impl DeadLetter {
    /// A record of the dead-letter topic, read as a letter.
    pub fn of(record: Incoming) -> DeadLetter {
        DeadLetter {
            partition: record.partition,
            offset: record.offset,
            kind: header(&record, "baton.dlq.kind").unwrap_or_default(),
            reason: header(&record, "baton.dlq.reason").unwrap_or_default(),
            origin_topic: header(&record, "baton.dlq.topic"),
            origin_partition: header(&record, "baton.dlq.partition").and_then(|p| p.parse().ok()),
            origin_offset: header(&record, "baton.dlq.offset").and_then(|o| o.parse().ok()),
            truncated: header(&record, "baton.dlq.truncated").is_some(),
            record,
        }
    }

    /// The record as it was before it became a letter, or why it cannot be
    /// replayed.
    pub fn original(&self) -> Result<Outgoing, String> {
        if self.truncated {
            return Err(format!(
                "only the head of its payload was kept; replay it from {}/{}/{}",
                self.origin_topic.as_deref().unwrap_or("?"),
                self.origin_partition.map_or("?".into(), |p| p.to_string()),
                self.origin_offset.map_or("?".into(), |o| o.to_string())
            ));
        }
        let Some(topic) = &self.origin_topic else {
            return Err("it names no origin topic (baton.dlq.topic)".into());
        };
        Ok(Outgoing {
            topic: topic.clone(),
            partition: self.origin_partition,
            key: self.record.key.clone().unwrap_or_default(),
            payload: self.record.payload.clone(),
            headers: self
                .record
                .headers
                .iter()
                .filter(|(k, _)| !k.starts_with("baton.dlq.") && k != "baton.version")
                .cloned()
                .collect(),
        })
    }
}

/// Every committed letter of the dead-letter topic that `filter` admits,
/// by partition and offset.
pub fn read(cfg: &Config, filter: &Filter) -> Result<Vec<DeadLetter>, KafkaFailure> {
    let topic = cfg.topics.dead_letters();
    let mut out = Vec::new();
    for p in 0..cfg.topics.partitions {
        if filter.partition.is_some_and(|f| f != p) {
            continue;
        }
        kafka::scan_partition(cfg, &topic, p, |r| {
            let d = DeadLetter::of(r);
            if filter.admits(&d) {
                out.push(d);
            }
        })?;
    }
    Ok(out)
}

/// Publishes the original record of every letter that has one; returns
/// the letters that could not be replayed, each with the reason.
pub fn replay<'a>(
    cfg: &Config,
    letters: &'a [DeadLetter],
) -> Result<Vec<(&'a DeadLetter, String)>, KafkaFailure> {
    let mut records = Vec::new();
    let mut refused = Vec::new();
    for d in letters {
        match d.original() {
            Ok(r) => records.push(r),
            Err(why) => refused.push((d, why)),
        }
    }
    kafka::send_plain(cfg, &records)?;
    Ok(refused)
}
