//! Reading a changelog record without decoding the whole instance: its
//! position guard, and the summary a shard keeps beside the bytes of an
//! instance it has not touched since (status, timers, open incidents). The
//! messages below are subsets of `baton.v1.ChangelogRecord`: protobuf skips
//! the fields they leave out without parsing them.

use prost::Message;

use super::{FORMAT, WireError, bad, pb};
use crate::engine::{Incident, Millis, Status, StepIdx};

#[derive(Clone, PartialEq, Message)]
struct Head {
    #[prost(uint64, tag = "1")]
    position: u64,
    #[prost(string, tag = "3")]
    source: String,
}

#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(uint64, tag = "1")]
    position: u64,
    #[prost(message, optional, tag = "2")]
    instance: Option<Snapshot>,
    #[prost(string, tag = "3")]
    source: String,
}

#[derive(Clone, PartialEq, Message)]
struct Snapshot {
    #[prost(uint32, tag = "1")]
    format: u32,
    #[prost(string, tag = "2")]
    process: String,
    #[prost(uint32, tag = "3")]
    version: u32,
    #[prost(int32, tag = "5")]
    status: i32,
    #[prost(message, repeated, tag = "7")]
    tokens: Vec<TokenStep>,
    #[prost(message, repeated, tag = "9")]
    timers: Vec<Timer>,
    #[prost(message, repeated, tag = "11")]
    incidents: Vec<pb::Incident>,
    #[prost(uint64, tag = "20")]
    started_at: u64,
    #[prost(uint64, tag = "21")]
    updated_at: u64,
    #[prost(string, tag = "22")]
    trace: String,
    #[prost(string, tag = "24")]
    definition_hash: String,
    #[prost(bool, tag = "25")]
    compensated: bool,
}

#[derive(Clone, PartialEq, Message)]
struct TokenStep {
    #[prost(uint32, tag = "2")]
    step: u32,
}

#[derive(Clone, PartialEq, Message)]
struct Timer {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(uint64, tag = "2")]
    due: u64,
}

/// What a changelog record says about its instance, short of decoding it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peek {
    /// Where the record that wrote it sits (see [`super::decode_changelog_at`]).
    pub source: String,
    pub position: u64,
    pub process: String,
    pub version: u32,
    /// Content hash of the definition version it runs (empty: not recorded).
    pub definition: String,
    pub status: Status,
    /// Pending timers: id and due time.
    pub timers: Vec<(String, Millis)>,
    /// The steps its tokens are at (indexes into its definition version).
    pub steps: Vec<StepIdx>,
    /// Its open incidents in full.
    pub open: Vec<Incident>,
    pub started_at: Millis,
    pub updated_at: Millis,
    pub trace: Option<String>,
    /// It compensated completed tasks.
    pub compensated: bool,
}

/// The position guard of a changelog record: its source topic (empty: the
/// repartition topic) and position.
pub fn changelog_position(bytes: &[u8]) -> Result<(String, u64), WireError> {
    let h = Head::decode(bytes)?;
    Ok((h.source, h.position))
}

/// The summary of a changelog record's instance; an error for anything
/// [`super::decode_changelog_at`] would refuse on these fields.
pub fn peek_changelog(bytes: &[u8]) -> Result<Peek, WireError> {
    let r = Record::decode(bytes)?;
    let s = r.instance.ok_or_else(|| bad("instance", "missing"))?;
    if s.format != FORMAT {
        return Err(WireError::Format(s.format));
    }
    if s.process.is_empty() {
        return Err(bad("process", "empty"));
    }
    Ok(Peek {
        source: r.source,
        position: r.position,
        status: status(s.status)?,
        process: s.process,
        version: s.version,
        definition: s.definition_hash,
        timers: s.timers.into_iter().map(|t| (t.id, t.due)).collect(),
        steps: s.tokens.iter().map(|t| t.step as StepIdx).collect(),
        open: s.incidents.into_iter().map(super::incident).collect(),
        started_at: s.started_at,
        updated_at: s.updated_at,
        trace: (!s.trace.is_empty()).then_some(s.trace),
        compensated: s.compensated,
    })
}

/// A snapshot's status.
pub(super) fn status(value: i32) -> Result<Status, WireError> {
    match pb::Status::try_from(value) {
        Ok(pb::Status::Pending) => Ok(Status::Pending),
        Ok(pb::Status::Active) => Ok(Status::Active),
        Ok(pb::Status::Completed) => Ok(Status::Completed),
        Ok(pb::Status::Failed) => Ok(Status::Failed),
        Ok(pb::Status::Cancelled) => Ok(Status::Cancelled),
        Ok(pb::Status::Unspecified) | Err(_) => {
            Err(bad("status", format!("unknown value {value}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Incident, Instance, TimerKind};

    #[test]
    fn a_peek_agrees_with_the_full_decode() {
        let mut i = Instance::new("order-to-cash", 3, "o-1");
        i.status = Status::Active;
        i.definition = "abc123".into();
        i.compensated = true;
        i.updated_at = 1_700_000_000_000;
        i.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        i.vars.insert("total".into(), serde_json::json!(250));
        i.started_at = 1_699_999_000_000;
        i.tokens.push(crate::engine::Token {
            id: 1,
            step: 3,
            attempt: 1,
            visit: 1,
            phase: crate::engine::Phase::Awaiting,
            parent: None,
        });
        i.timers.push(crate::engine::Timer {
            id: "reserve/timeout/1".into(),
            due: 1_700_000_060_000,
            kind: TimerKind::Timeout(1),
        });
        i.incidents.push(Incident {
            id: 1,
            token: None,
            step: None,
            reason: "boom".into(),
            at: 5,
        });
        let bytes = super::super::encode_changelog_at("crm.events", 42, &i);
        let (source, position, full) = super::super::decode_changelog_at(&bytes).expect("decodes");
        let p = peek_changelog(&bytes).expect("peeks");
        assert_eq!((p.source.as_str(), p.position), (source.as_str(), position));
        assert_eq!(
            changelog_position(&bytes).expect("head"),
            (source, position)
        );
        assert_eq!(
            (p.process.as_str(), p.version, p.definition.as_str()),
            (
                full.process.as_str(),
                full.version,
                full.definition.as_str()
            )
        );
        assert_eq!(
            (p.status, p.updated_at, p.trace.clone(), p.compensated),
            (
                full.status,
                full.updated_at,
                full.trace.clone(),
                full.compensated
            )
        );
        assert_eq!(
            p.timers,
            full.timers
                .iter()
                .map(|t| (t.id.clone(), t.due))
                .collect::<Vec<_>>()
        );
        assert_eq!(p.open.len(), 1);
        assert_eq!(p.open, full.incidents);
        assert_eq!(p.started_at, full.started_at);
        assert_eq!(
            p.steps,
            full.tokens.iter().map(|t| t.step).collect::<Vec<_>>()
        );
        assert!(peek_changelog(b"\x12\x03abc").is_err());
    }
}
