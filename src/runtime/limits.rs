//! The instance cap. A shard that holds `runtime.max_instances_per_shard`
//! instances does not take a new one; `runtime.at_instance_cap` says how:
//!
//! - `refuse` (the default): the event becomes a dead letter of kind
//!   `instance-cap` (see `Shard::with_cap`), while events for the instances
//!   it holds, timers and operator actions go on, so those instances still
//!   end and leave memory. Pausing the shard's whole partition instead would
//!   stall it for good: the answers its instances wait for and their due
//!   timers (timeouts, retention: written to the shard's repartition
//!   partition, they fire when read back) are records of that partition.
//! - `pause` (with `runtime.in_place`): the input partition stops at the
//!   event ([`Stop`]): it is neither consumed nor processed, nor is anything
//!   after it, the partition is paused, and it goes on from the event when
//!   the shard is below its cap again. Routing sees it coming: it counts the
//!   instances the batch starts in place on shards near their cap
//!   ([`Admitting`]). Should a shard still meet its cap in the middle of a
//!   batch, the batch is aborted and processed again up to that event.
//!   Timers and operator actions arrive on the repartition topic, so they go
//!   on and can make room.
//!
//! This also says when a shard reaches its cap and when it is below it again.

use super::*;

use std::collections::HashSet;

use crate::config::AtInstanceCap;

/// The instances the batch being routed starts in place, per shard, counted
/// only where the batch could take the shard past its cap.
#[derive(Debug, Default)]
pub(super) struct Admitting {
    /// Records in the batch.
    batch: usize,
    fresh: HashMap<i32, HashSet<String>>,
}

impl Admitting {
    /// A new batch of `records` records is routed.
    pub(super) fn begin(&mut self, records: usize) {
        self.batch = records;
        self.fresh.clear();
    }
}

/// An input partition stopped at the offset of an event that would start an
/// instance on a full shard.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stop {
    /// The event's offset: nothing at or after it is processed.
    offset: i64,
    /// A record at or after `offset` was read and held back, so the read
    /// position is past it: going on needs a seek back to `offset`.
    passed: bool,
}

impl Runtime {
    /// Logs shards reaching and leaving their cap; the `shards_full` gauge.
    /// Stopped inputs that have reached their stop go on from there when
    /// their shard has room again or is no longer here.
    pub(super) fn watch_caps(&mut self) -> Result<(), RuntimeError> {
        let cap = self.cfg.runtime.max_instances_per_shard;
        // A shard counts as full from its cap until it holds 90 % of it or
        // less, so one that stays near its cap neither logs nor stops and
        // goes on at every instance that leaves.
        let room_again = cap - (cap / 10).max(1);
        let pause = self.cfg.runtime.at_instance_cap == AtInstanceCap::Pause;
        self.full.retain(|p| self.shards.contains_key(p));
        for (&p, s) in &self.shards {
            let full = s.state.full() || (self.full.contains(&p) && s.state.len() > room_again);
            if full && self.full.insert(p) {
                if pause {
                    warn!(
                        shard = p,
                        cap,
                        "the shard holds its cap of instances (runtime.max_instances_per_shard): its input stops at the next event for a new instance until some end (runtime.at_instance_cap = pause)"
                    );
                } else {
                    warn!(
                        shard = p,
                        cap,
                        "the shard holds its cap of instances (runtime.max_instances_per_shard): events for new instances become dead letters (kind instance-cap) until some end"
                    );
                }
            } else if !full && self.full.remove(&p) {
                info!(
                    shard = p,
                    instances = s.state.len(),
                    "the shard holds 90 % of its instance cap or less again"
                );
            }
        }
        self.stats.metrics.shards_full.set(self.full.len() as i64);
        // A stop counts once the input has reached it: until then the
        // records before it (read again after the abort that set it) are
        // still to come, and the shard is not yet as full as it will be.
        let room: Vec<(String, i32)> = self
            .stops
            .iter()
            .filter(|((_, p), stop)| stop.passed && !self.full.contains(p))
            .map(|(key, _)| key.clone())
            .collect();
        for key in room {
            if let Some(stop) = self.stops.remove(&key) {
                self.go_on(&key, stop)?;
            }
        }
        self.stats
            .metrics
            .inputs_stopped
            .set(self.stops.len() as i64);
        Ok(())
    }

    /// Stops input partition `at.0`/`at.1` at offset `at.2`: nothing from
    /// there on is processed until its shard has room.
    pub(super) fn stop_input(&mut self, at: process::Coords) {
        let (topic, p, offset) = at;
        debug!(
            topic = %topic,
            partition = p,
            offset,
            cap = self.cfg.runtime.max_instances_per_shard,
            "an event would start an instance on a full shard: its input stops there until instances leave (runtime.at_instance_cap = pause)"
        );
        self.stops.insert(
            (topic, p),
            Stop {
                offset,
                passed: false,
            },
        );
        self.stats
            .metrics
            .inputs_stopped
            .set(self.stops.len() as i64);
    }

    /// Whether `m` is of a stopped input, at or after its stop: it is
    /// neither processed nor consumed, and the input is paused.
    pub(super) fn held_back(&mut self, m: &Incoming) -> bool {
        if self.stops.is_empty() {
            return false;
        }
        let Some(stop) = self.stops.get_mut(&(m.topic.clone(), m.partition)) else {
            return false;
        };
        if m.offset < stop.offset {
            return false;
        }
        stop.passed = true;
        // Again for a record read after the pause (a restore resumes the
        // inputs of its shard): pausing a paused partition is cheap.
        if let Err(e) = self.consumer.pause(&m.topic, m.partition) {
            debug!(topic = %m.topic, partition = m.partition, error = %e, "input partition not paused");
        }
        true
    }

    /// Whether input record `m`, going where `routes` say, would start
    /// instances on its own shard (in place) beyond the cap, counting those
    /// the batch starts before it: then its input stops at it, and it is left
    /// as it is.
    pub(super) fn stops_at_cap(&mut self, m: &Incoming, routes: &crate::shard::Routes) -> bool {
        if self.cfg.runtime.at_instance_cap != AtInstanceCap::Pause
            || !self.in_place
            || self.faults.as_ref().is_some_and(Armed::blind_admission)
        {
            return false;
        }
        let p = m.partition;
        let Some(shard) = self.shards.get(&p) else {
            return false;
        };
        let cap = self.cfg.runtime.max_instances_per_shard;
        let held = shard.state.len();
        let fresh = self.admitting.fresh.get(&p).map_or(0, HashSet::len);
        if held + fresh + self.admitting.batch < cap {
            // The whole batch fits.
            return false;
        }
        let fresh_ids = self.admitting.fresh.entry(p).or_default();
        let new: Vec<String> = routes
            .to
            .iter()
            .map(|(process, key)| format!("{process}/{key}"))
            .filter(|id| {
                shard_of(id, self.partitions) == p
                    && !shard.state.holds(id)
                    && !fresh_ids.contains(id)
            })
            .collect();
        if new.is_empty() {
            return false;
        }
        if held + fresh_ids.len() + new.len() <= cap {
            fresh_ids.extend(new);
            return false;
        }
        self.stop_input((m.topic.clone(), p, m.offset));
        // Nothing at or after it is read any more.
        self.held_back(m)
    }

    /// The transaction was rolled back and every input goes back to its
    /// committed offset: stopped inputs are read again from there up to
    /// their stop, which stays (nothing at or after it was processed since
    /// it was set). Lifting the stops instead would let inputs of one shard
    /// from several topics lift each other's stop, round after round.
    pub(super) fn rewind_stops(&mut self) {
        for ((topic, p), stop) in self.stops.iter_mut() {
            if stop.passed {
                stop.passed = false;
                if let Err(e) = self.consumer.resume(topic, *p) {
                    debug!(topic = %topic, partition = p, error = %e, "input partition not resumed");
                }
            }
        }
    }

    /// A stopped input that has reached its stop goes on from there: the
    /// read position goes back to the event it stopped at. A position
    /// that cannot be set is not guessed: the consumer is rebuilt and starts
    /// again from what was committed.
    fn go_on(&mut self, (topic, p): &(String, i32), stop: Stop) -> Result<(), RuntimeError> {
        debug!(
            topic = %topic,
            partition = p,
            offset = stop.offset,
            "the shard has room again: its input goes on"
        );
        let moved = self
            .consumer
            .seek(topic, *p, stop.offset)
            .and_then(|()| self.consumer.resume(topic, *p));
        if let Err(e) = moved {
            warn!(topic = %topic, partition = p, error = %e, "cannot go back to where the input stopped; rebuilding the consumer");
            return self.rejoin();
        }
        Ok(())
    }
}
