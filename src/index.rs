//! The live index of the instances this process holds, for the admin API.
//!
//! The runtime writes it when a transaction commits (and when a shard
//! restores), the admin API reads it while the shards keep running: a
//! `DashMap`, so readers and the writer lock only the map segment they touch.
//! An entry is a summary for filtering and paging, and the committed
//! changelog record, shared with the shard that holds the instance cold, for
//! the full view of one instance.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dashmap::DashMap;

use crate::engine::{Incident, Instance, Millis, Status, StepIdx};

/// One instance as the API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub shard: i32,
    pub version: u32,
    pub status: Status,
    /// Where its tokens are, by step index in its definition version.
    pub steps: Box<[StepIdx]>,
    pub incidents: Box<[Incident]>,
    pub started_at: Millis,
    pub updated_at: Millis,
    /// It compensated completed tasks (on a failure or a cancel).
    pub compensated: bool,
    /// Its committed changelog record.
    pub record: Arc<[u8]>,
}

impl Entry {
    /// The entry of an instance whose changelog record is `record`.
    pub fn of(inst: &Instance, shard: i32, record: Arc<[u8]>) -> Entry {
        Entry {
            shard,
            version: inst.version,
            status: inst.status,
            steps: inst.tokens.iter().map(|t| t.step).collect(),
            incidents: inst.incidents.iter().cloned().collect(),
            started_at: inst.started_at,
            updated_at: inst.updated_at,
            compensated: inst.compensated,
            record,
        }
    }

    /// The entry of a changelog record read on restore.
    pub fn peeked(peek: &crate::wire::Peek, shard: i32, record: Arc<[u8]>) -> Entry {
        Entry {
            shard,
            version: peek.version,
            status: peek.status,
            steps: peek.steps.iter().copied().collect(),
            incidents: peek.open.iter().cloned().collect(),
            started_at: peek.started_at,
            updated_at: peek.updated_at,
            compensated: peek.compensated,
            record,
        }
    }

    /// When it ended (its last update, for an ended instance).
    pub fn ended_at(&self) -> Option<Millis> {
        self.status.is_ended().then_some(self.updated_at)
    }
}

/// A value the runtime replaces now and then (the deployed definitions)
/// while the admin API reads it: readers take the current `Arc`.
pub struct Current<T>(std::sync::RwLock<Arc<T>>);

impl<T> Current<T> {
    pub fn new(value: T) -> Current<T> {
        Current(std::sync::RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        match self.0.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut v) => *v = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// What became of an operator request, as committed by the shard that owns
/// its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It changed the instance.
    Applied,
    /// The instance had applied the same request before.
    Repeated,
    /// It does not apply to its instance; why.
    Refused(String),
}

/// Outcomes of recent operator requests by request id (the most recent
/// [`Outcomes::KEPT`]), for the admin API's jobs to follow.
#[derive(Default)]
pub struct Outcomes {
    by_request: DashMap<String, Outcome>,
    order: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl Outcomes {
    /// How many outcomes are kept; older ones are forgotten.
    pub const KEPT: usize = 200_000;

    pub fn record(&self, outcomes: impl IntoIterator<Item = (String, Outcome)>) {
        let Ok(mut order) = self.order.lock() else {
            return;
        };
        for (request, outcome) in outcomes {
            if self.by_request.insert(request.clone(), outcome).is_none() {
                order.push_back(request);
            }
        }
        while order.len() > Self::KEPT {
            if let Some(old) = order.pop_front() {
                self.by_request.remove(&old);
            }
        }
    }

    pub fn get(&self, request: &str) -> Option<Outcome> {
        self.by_request.get(request).map(|o| o.clone())
    }
}

/// A change to the index, applied when the transaction that wrote it commits.
#[derive(Debug, Clone)]
pub enum Update {
    Put(Arc<str>, Entry),
    Remove(Arc<str>),
}

/// Which instances a query wants; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub process: Option<String>,
    pub version: Option<u32>,
    pub status: Option<Status>,
    /// A step id: one of the instance's tokens is there.
    pub step: Option<String>,
    pub key_prefix: Option<String>,
    /// Has (true) or has not (false) an open incident.
    pub incident: Option<bool>,
    pub started_after: Option<Millis>,
    pub started_before: Option<Millis>,
    pub ended_after: Option<Millis>,
    pub ended_before: Option<Millis>,
}

impl Filter {
    /// Whether `id` (`process/key`) and its entry match; `steps` names the
    /// steps of the entry's definition version (`None`: unknown version).
    pub fn matches(&self, id: &str, e: &Entry, steps: Option<&[String]>) -> bool {
        let (process, key) = id.split_once('/').unwrap_or((id, ""));
        if self.process.as_deref().is_some_and(|p| p != process)
            || self.version.is_some_and(|v| v != e.version)
            || self.status.is_some_and(|s| s != e.status)
            || self
                .key_prefix
                .as_deref()
                .is_some_and(|k| !key.starts_with(k))
            || self
                .incident
                .is_some_and(|want| want == e.incidents.is_empty())
            || self.started_after.is_some_and(|t| e.started_at < t)
            || self.started_before.is_some_and(|t| e.started_at >= t)
        {
            return false;
        }
        if self.ended_after.is_some() || self.ended_before.is_some() {
            let Some(ended) = e.ended_at() else {
                return false;
            };
            if self.ended_after.is_some_and(|t| ended < t)
                || self.ended_before.is_some_and(|t| ended >= t)
            {
                return false;
            }
        }
        if let Some(step) = &self.step {
            let Some(names) = steps else { return false };
            let at = |s: &StepIdx| names.get(*s).is_some_and(|n| n == step);
            let parked = e.incidents.iter().any(|i| i.step.as_ref().is_some_and(at));
            if !e.steps.iter().any(at) && !parked {
                return false;
            }
        }
        true
    }
}

/// Looks up the step names of a process version, for filters by step.
pub type StepNames<'a> = dyn Fn(&str, u32) -> Option<Arc<[String]>> + 'a;

/// The instances this process holds: entries by id, and the ids in order.
#[derive(Default)]
pub struct Index {
    entries: DashMap<Arc<str>, Entry>,
    /// Every id, sorted: a page is a range of it, not a pass over all.
    order: RwLock<BTreeSet<Arc<str>>>,
}

impl Index {
    fn order(&self) -> RwLockReadGuard<'_, BTreeSet<Arc<str>>> {
        self.order.read().unwrap_or_else(|p| p.into_inner())
    }

    fn order_mut(&self) -> RwLockWriteGuard<'_, BTreeSet<Arc<str>>> {
        self.order.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn apply(&self, updates: impl IntoIterator<Item = Update>) {
        let mut order = self.order_mut();
        for u in updates {
            match u {
                Update::Put(id, e) => {
                    if self.entries.insert(id.clone(), e).is_none() {
                        order.insert(id);
                    }
                }
                Update::Remove(id) => {
                    if self.entries.remove(&id).is_some() {
                        order.remove(&id);
                    }
                }
            }
        }
    }

    /// Forgets every instance (the process left the group).
    pub fn apply_clear(&self) {
        let mut order = self.order_mut();
        self.entries.clear();
        order.clear();
    }

    /// Forgets a shard's instances (the shard was released or restores again).
    pub fn drop_shard(&self, shard: i32) {
        let mut order = self.order_mut();
        self.entries.retain(|id, e| {
            let keep = e.shard != shard;
            if !keep {
                order.remove(id);
            }
            keep
        });
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        self.entries.get(id).map(|e| e.clone())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Hands every entry to `each`, in no particular order (for figures
    /// over all instances, such as the console's overview).
    pub fn scan(&self, mut each: impl FnMut(&str, &Entry)) {
        for e in self.entries.iter() {
            each(e.key(), e.value());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first `limit` matching instances in id order after `after`: a
    /// walk along the sorted ids from the cursor (or from the filter's
    /// `process/key_prefix`, which bounds it too) that stops at `limit`
    /// matches, so a page costs O(log n + what it skips), not a pass over
    /// every instance.
    pub fn page(
        &self,
        filter: &Filter,
        after: Option<&str>,
        limit: usize,
        steps: &StepNames<'_>,
    ) -> Vec<(Arc<str>, Entry)> {
        let mut out = Vec::with_capacity(limit.min(1024));
        if limit == 0 {
            return out;
        }
        self.walk(filter, after, steps, |id, e| {
            out.push((id.clone(), e.clone()));
            out.len() < limit
        });
        out
    }

    /// Every matching instance's id, in order (for bulk actions and migrations).
    pub fn ids(&self, filter: &Filter, steps: &StepNames<'_>) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        self.walk(filter, None, steps, |id, _| {
            out.push(id.clone());
            true
        });
        out
    }

    /// How many instances match.
    pub fn count(&self, filter: &Filter, steps: &StepNames<'_>) -> usize {
        let mut n = 0;
        self.walk(filter, None, steps, |_, _| {
            n += 1;
            true
        });
        n
    }

    /// Hands the matching entries after `after` to `each`, in id order,
    /// until it returns false.
    fn walk(
        &self,
        filter: &Filter,
        after: Option<&str>,
        steps: &StepNames<'_>,
        mut each: impl FnMut(&Arc<str>, &Entry) -> bool,
    ) {
        // Ids of one process (and key prefix) are one range of the order.
        let scope = filter
            .process
            .as_ref()
            .map(|p| format!("{p}/{}", filter.key_prefix.as_deref().unwrap_or("")));
        let from = match (after, scope.as_deref()) {
            (Some(a), Some(s)) if a >= s => Bound::Excluded(a),
            (_, Some(s)) => Bound::Included(s),
            (Some(a), None) => Bound::Excluded(a),
            (None, None) => Bound::Unbounded,
        };
        let order = self.order();
        for id in order.range::<str, _>((from, Bound::Unbounded)) {
            if scope.as_deref().is_some_and(|s| !id.starts_with(s)) {
                break;
            }
            let Some(e) = self.entries.get(id) else {
                continue;
            };
            let names = filter.step.as_ref().and_then(|_| {
                let process = id.split_once('/').map_or(&**id, |(p, _)| p);
                steps(process, e.version)
            });
            if filter.matches(id, &e, names.as_deref()) && !each(id, &e) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(shard: i32, status: Status, steps: &[StepIdx], started: Millis) -> Entry {
        Entry {
            shard,
            version: 1,
            status,
            steps: steps.into(),
            incidents: Box::new([]),
            started_at: started,
            updated_at: started + 10,
            compensated: false,
            record: Arc::from(&b""[..]),
        }
    }

    fn names(_: &str, _: u32) -> Option<Arc<[String]>> {
        Some(Arc::from(vec!["reserve".to_string(), "charge".to_string()]))
    }

    #[test]
    fn pages_walk_every_match_once_in_id_order() {
        let index = Index::default();
        let mut updates = Vec::new();
        for n in 0..250 {
            let status = if n % 3 == 0 {
                Status::Completed
            } else {
                Status::Active
            };
            let id: Arc<str> = Arc::from(format!("order-to-cash/o-{n:04}"));
            updates.push(Update::Put(
                id,
                entry(n % 4, status, &[n as usize % 2], n as u64),
            ));
        }
        updates.push(Update::Put(
            Arc::from("onboarding/c-1"),
            entry(0, Status::Active, &[0], 1),
        ));
        index.apply(updates);
        let filter = Filter {
            process: Some("order-to-cash".into()),
            status: Some(Status::Active),
            ..Filter::default()
        };
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = index.page(&filter, after.as_deref(), 40, &names);
            if page.is_empty() {
                break;
            }
            after = page.last().map(|(id, _)| id.to_string());
            seen.extend(page.into_iter().map(|(id, _)| id.to_string()));
        }
        let want: Vec<String> = (0..250)
            .filter(|n| n % 3 != 0)
            .map(|n| format!("order-to-cash/o-{n:04}"))
            .collect();
        assert_eq!(seen, want);
        let at_charge = Filter {
            step: Some("charge".into()),
            ..filter.clone()
        };
        assert!(
            index
                .ids(&at_charge, &names)
                .iter()
                .all(|id| id.ends_with(|c: char| "13579".contains(c)))
        );
        index.drop_shard(0);
        assert!(index.ids(&Filter::default(), &names).len() < 251 - 60);
    }

    #[test]
    fn a_process_and_key_prefix_bound_the_walk_and_updates_keep_the_order() {
        let index = Index::default();
        let put =
            |id: &str, shard| Update::Put(Arc::from(id), entry(shard, Status::Active, &[0], 1));
        index.apply(
            ["a/k-1", "b/k-1", "b/k-2", "b/x-1", "b/k-3", "c/k-1"]
                .iter()
                .enumerate()
                .map(|(n, id)| put(id, n as i32 % 2)),
        );
        let ids = |f: &Filter, after: Option<&str>| -> Vec<String> {
            index
                .page(f, after, 10, &names)
                .into_iter()
                .map(|(id, _)| id.to_string())
                .collect()
        };
        let b = Filter {
            process: Some("b".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&b, None), ["b/k-1", "b/k-2", "b/k-3", "b/x-1"]);
        assert_eq!(ids(&b, Some("a/zzz")), ["b/k-1", "b/k-2", "b/k-3", "b/x-1"]);
        assert_eq!(ids(&b, Some("b/k-2")), ["b/k-3", "b/x-1"]);
        let bk = Filter {
            process: Some("b".into()),
            key_prefix: Some("k-".into()),
            ..Filter::default()
        };
        assert_eq!(ids(&bk, None), ["b/k-1", "b/k-2", "b/k-3"]);
        assert!(ids(&bk, Some("b/x")).is_empty());
        // Removing, re-putting and dropping a shard keep ids and order as one.
        index.apply([Update::Remove(Arc::from("b/k-2")), put("b/k-1", 0)]);
        assert_eq!(ids(&bk, None), ["b/k-1", "b/k-3"]);
        index.drop_shard(0);
        assert_eq!(index.len(), index.ids(&Filter::default(), &names).len());
        assert!(index.get("a/k-1").is_none());
        index.apply_clear();
        assert!(index.is_empty() && index.ids(&Filter::default(), &names).is_empty());
    }

    #[test]
    fn filters_on_times_incidents_and_keys() {
        let mut e = entry(0, Status::Completed, &[], 100);
        let f = |f: Filter| f.matches("p/k-1", &e, None);
        assert!(f(Filter {
            ended_after: Some(105),
            ended_before: Some(111),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            ended_after: Some(111),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            started_before: Some(100),
            ..Filter::default()
        }));
        assert!(f(Filter {
            key_prefix: Some("k-".into()),
            incident: Some(false),
            ..Filter::default()
        }));
        e.status = Status::Active;
        assert!(e.ended_at().is_none());
        e.incidents = vec![Incident {
            id: 1,
            token: None,
            step: Some(1),
            reason: "boom".into(),
            at: 3,
        }]
        .into();
        assert!(
            Filter {
                step: Some("charge".into()),
                incident: Some(true),
                ..Filter::default()
            }
            .matches("p/k-1", &e, Some(&["reserve".into(), "charge".into()]))
        );
    }
}
