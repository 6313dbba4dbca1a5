//! Definitions deployed at run time: every process follows the compacted
//! definitions topic from its start and adds each version it has not seen
//! to its registry between batches, so new instances take the newest
//! version without a restart while running ones keep theirs. A version
//! published twice with different texts keeps the one that came first, on
//! every process alike; a record that does not parse is logged and skipped.

use super::*;

/// How often the definitions topic is read for new versions.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The runtime's view of the definitions topic.
pub(super) struct Deploys {
    follower: kafka::Follower,
    read_at: Instant,
}

impl Deploys {
    /// Starts following `topic` and adds what it holds to `registry`.
    pub(super) fn start(
        cfg: &Config,
        topic: &str,
        registry: &mut Registry,
    ) -> Result<Deploys, RuntimeError> {
        let follower = kafka::Follower::new(cfg, topic, 0)?;
        for m in follower.catch_up(Duration::from_secs(120))? {
            take(registry, &m);
        }
        Ok(Deploys {
            follower,
            read_at: Instant::now(),
        })
    }
}

/// Adds the definition of one record to `registry`; whether it was new.
fn take(registry: &mut Registry, m: &Incoming) -> bool {
    let Some(bytes) = m.payload.as_deref() else {
        return false;
    };
    let r = match wire::decode_deploy(bytes) {
        Ok(r) => r,
        Err(e) => {
            warn!(offset = m.offset, error = %e, "definitions topic: a record that is not a definition, skipped");
            return false;
        }
    };
    let def = match crate::dsl::parse(&r.file, &r.source) {
        Ok(d) => d,
        Err(diags) => {
            warn!(offset = m.offset, file = %r.file, diagnostics = %diags, "definitions topic: a definition that does not parse, skipped");
            return false;
        }
    };
    if (def.process.as_str(), def.version) != (r.process.as_str(), r.version) {
        warn!(offset = m.offset, file = %r.file, "definitions topic: the record's process or version differs from its source's, skipped");
        return false;
    }
    let known = registry.get(&r.process, r.version).is_some();
    match registry.deploy(def, &r.source) {
        Ok(_) if known => false,
        Ok(d) => {
            info!(process = %d.process, version = d.version, hash = %d.hash, by = %r.by, "definition deployed");
            registry.set_origin(&r.process, r.version, &r.by, r.at);
            true
        }
        Err(e) => {
            warn!(offset = m.offset, by = %r.by, error = %e, "definitions topic: kept the version deployed first");
            false
        }
    }
}

impl Runtime {
    /// Adds versions deployed since the last look (at most every
    /// [`FOLLOW_EVERY`] unless `now`); new command topics are created, and
    /// the admin API sees the new registry.
    pub(super) fn follow_deploys(&mut self, now: bool) -> Result<(), RuntimeError> {
        if !now && self.deploys.read_at.elapsed() < FOLLOW_EVERY {
            return Ok(());
        }
        self.deploys.read_at = Instant::now();
        // The broker away is no reason to stop: the topic is read again at
        // the next turn (readiness says the process is not ready meanwhile).
        let records = match self.deploys.follower.poll() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot read the definitions topic; trying again");
                return Ok(());
            }
        };
        let mut changed = false;
        for m in &records {
            changed |= take(&mut self.registry, m);
        }
        if !changed {
            return Ok(());
        }
        let n = self.partitions;
        let topics: Vec<(String, i32, bool)> = command_topics(&self.registry)
            .into_iter()
            .map(|t| (t, n, false))
            .collect();
        kafka::ensure_topics(&self.cfg, &topics)?;
        self.hashes = hashes(&self.registry);
        self.published.set(self.registry.clone());
        Ok(())
    }
}
