//! Records of the definitions topic (`<prefix>.definitions`, compacted):
//! one deployed definition version as JSON, keyed `process/version/hash`,
//! so two different texts published for one version both stay and every
//! process keeps the one that came first.
//!
//! ```json
//! {"v": 1, "process": "order-to-cash", "version": 2, "hash": "…",
//!  "file": "order-to-cash.yaml", "source": "process: order-to-cash\n…",
//!  "by": "ops", "at": 1764700000000}
//! ```

use serde::{Deserialize, Serialize};

use super::WireError;

/// The definitions record format this build writes and reads.
pub const DEPLOY_FORMAT: u32 = 1;

/// One deployed definition version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub v: u32,
    pub process: String,
    pub version: u32,
    /// The content hash of `source`.
    pub hash: String,
    /// The file it came from, for diagnostics.
    pub file: String,
    pub source: String,
    /// Who deployed it (the admin token's name).
    pub by: String,
    /// When, in epoch milliseconds.
    pub at: u64,
}

impl DeployRecord {
    /// The record's key.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.process, self.version, self.hash)
    }
}

pub fn encode_deploy(r: &DeployRecord) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

pub fn decode_deploy(bytes: &[u8]) -> Result<DeployRecord, WireError> {
    let r: DeployRecord =
        serde_json::from_slice(bytes).map_err(|e| WireError::Deploy(e.to_string()))?;
    if r.v != DEPLOY_FORMAT {
        return Err(WireError::Deploy(format!(
            "format v{} (this build reads v{DEPLOY_FORMAT})",
            r.v
        )));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploy_record_round_trips_and_another_format_is_refused() {
        let r = DeployRecord {
            v: DEPLOY_FORMAT,
            process: "p".into(),
            version: 2,
            hash: "abc".into(),
            file: "p.yaml".into(),
            source: "process: p".into(),
            by: "ops".into(),
            at: 5,
        };
        assert_eq!(decode_deploy(&encode_deploy(&r)).expect("decodes"), r);
        assert_eq!(r.key(), "p/2/abc");
        let mut other = r;
        other.v = 9;
        let err = decode_deploy(&encode_deploy(&other)).expect_err("refused");
        assert!(err.to_string().contains("format v9"), "{err}");
        assert!(decode_deploy(b"{").is_err());
    }
}
