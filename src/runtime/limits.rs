//! The instance cap: a shard that holds `runtime.max_instances_per_shard`
//! instances refuses events that would start a new one (they become dead
//! letters of kind `instance-cap`, see `Shard::with_cap`), while events for
//! the instances it holds, timers and operator actions go on, so those
//! instances still end and leave memory. Pausing the shard's partition
//! instead would stall it for good: the answers its instances wait for and
//! their due timers (timeouts, retention: written to the shard's partition,
//! they fire when read back) are records of that same partition. This says
//! when a shard reaches its cap and when it is below it again.

use super::*;

impl Runtime {
    /// Logs shards reaching and leaving their cap; the `shards_full` gauge.
    pub(super) fn watch_caps(&mut self) {
        let cap = self.cfg.runtime.max_instances_per_shard;
        self.full.retain(|p| self.shards.contains_key(p));
        for (&p, s) in &self.shards {
            let full = s.state.full();
            if full && self.full.insert(p) {
                warn!(
                    shard = p,
                    cap,
                    "the shard holds its cap of instances (runtime.max_instances_per_shard): events for new instances become dead letters (kind instance-cap) until some end"
                );
            } else if !full && self.full.remove(&p) {
                info!(
                    shard = p,
                    instances = s.state.len(),
                    "the shard is below its instance cap again: new instances start"
                );
            }
        }
        self.stats.metrics.shards_full.set(self.full.len() as i64);
    }
}
