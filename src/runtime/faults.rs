//! Faults a test injects into a runtime, to prove that a panic or a failed
//! commit costs time and never a command. Production code never sets them.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What to break, and how often.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Shard processing panics on the event with this id, this many times.
    pub panic_on_event: BTreeMap<String, u32>,
    /// Routing an input (decoded, before it reaches a shard) panics on the
    /// event with this id, this many times.
    pub panic_on_routing: BTreeMap<String, u32>,
    /// The next this many transaction commits fail (and are aborted).
    pub failed_commits: u32,
    /// After this many records were sent, sending the next one fails (once).
    pub send_fails_after: Option<u32>,
    /// Routing does not foresee the instance cap
    /// (`runtime.at_instance_cap = "pause"`): a shard meets it in the middle
    /// of a batch, which is aborted and processed again up to there.
    pub blind_admission: bool,
}

/// The faults still to inject, shared by the shard workers.
#[derive(Debug, Default)]
pub(super) struct Armed(Mutex<Faults>);

impl Armed {
    pub fn new(f: Faults) -> Armed {
        Armed(Mutex::new(f))
    }

    /// Panics if the event `id` is to panic once more in a shard.
    pub fn on_event(&self, id: &str) {
        if self.take(id, |f| &mut f.panic_on_event) {
            panic!("injected fault: panic on event {id}");
        }
    }

    /// Panics if the event `id` is to panic once more while it is routed.
    pub fn on_routing(&self, id: &str) {
        if self.take(id, |f| &mut f.panic_on_routing) {
            panic!("injected fault: panic routing event {id}");
        }
    }

    /// Counts one hit of `id` down in the table `which` picks; true if it hit.
    fn take(
        &self,
        id: &str,
        which: impl FnOnce(&mut Faults) -> &mut BTreeMap<String, u32>,
    ) -> bool {
        self.0
            .lock()
            .ok()
            .is_some_and(|mut f| match which(&mut f).get_mut(id) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            })
    }

    /// Whether this send is to fail.
    pub fn send_fails(&self) -> bool {
        self.0
            .lock()
            .ok()
            .is_some_and(|mut f| match f.send_fails_after {
                Some(0) => {
                    f.send_fails_after = None;
                    true
                }
                Some(ref mut n) => {
                    *n -= 1;
                    false
                }
                None => false,
            })
    }

    /// Whether routing is not to foresee the instance cap.
    pub fn blind_admission(&self) -> bool {
        self.0.lock().ok().is_some_and(|f| f.blind_admission)
    }

    /// Whether this commit is to fail.
    pub fn commit_fails(&self) -> bool {
        self.0.lock().ok().is_some_and(|mut f| {
            let hit = f.failed_commits > 0;
            f.failed_commits = f.failed_commits.saturating_sub(1);
            hit
        })
    }
}
