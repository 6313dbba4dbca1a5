//! The consumer group as the broker sees it: its state and who owns which
//! partition. Readiness needs it (a process is ready once the group has
//! settled, not when it received its first, possibly empty, assignment), and
//! operators see it in `/readyz`.
//!
//! rust-rdkafka has no binding for librdkafka's `DescribeConsumerGroups`
//! (which speaks both the classic protocol and KIP-848), so this module calls
//! it through `rdkafka::bindings`. The unsafe code is confined here: every
//! pointer librdkafka hands out is copied into owned values before the event
//! that owns it is destroyed.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString, c_char};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, ConsumerContext};
use serde::Serialize;

use super::{KafkaFailure, base};
use crate::config::Config;

/// A partition: (topic, partition).
pub type Part = (String, i32);

/// One member of the group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Member {
    pub member_id: String,
    /// Static membership's `group.instance.id`.
    pub instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    /// What the member owns now.
    pub assigned: BTreeSet<Part>,
    /// What the broker wants it to own (KIP-848 groups only).
    pub target: Option<BTreeSet<Part>>,
}

/// The group, as the coordinator last described it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GroupView {
    /// Stable, Empty, PreparingRebalance, …; for KIP-848 groups librdkafka
    /// reports only Stable, Empty and Dead by name, assigning and reconciling
    /// as Unknown.
    pub state: String,
    pub members: Vec<Member>,
}

impl GroupView {
    /// Why the group has not settled for member `me`, whose consumer holds
    /// `mine`, when `expected` are the partitions it subscribes to; `None`
    /// once it has: the coordinator calls the group stable, every expected
    /// partition has an owner, every member owns what the broker wants it to,
    /// and `me` is a member owning exactly what its consumer holds.
    pub fn unsettled(
        &self,
        me: &str,
        mine: &BTreeSet<Part>,
        expected: &BTreeSet<Part>,
    ) -> Option<String> {
        if self.state != "Stable" {
            return Some(format!("the group is {}", self.state));
        }
        let Some(member) = self.members.iter().find(|m| m.member_id == me) else {
            return Some("this process is not a member of the group yet".into());
        };
        if member.assigned != *mine {
            return Some("this process's assignment is still moving".into());
        }
        if let Some(m) = self
            .members
            .iter()
            .find(|m| m.target.as_ref().is_some_and(|t| *t != m.assigned))
        {
            return Some(format!(
                "member {} has not reached its target assignment",
                m.instance_id.as_deref().unwrap_or(&m.member_id)
            ));
        }
        let owned: BTreeSet<&Part> = self.members.iter().flat_map(|m| &m.assigned).collect();
        let orphans: Vec<String> = expected
            .iter()
            .filter(|p| !owned.contains(p))
            .map(|(t, p)| format!("{t}/{p}"))
            .collect();
        if !orphans.is_empty() {
            return Some(format!("no member owns {}", orphans.join(", ")));
        }
        None
    }
}

/// Describes one consumer group, on a client of its own (not a member).
pub struct GroupWatch {
    admin: AdminClient<DefaultClientContext>,
    group: CString,
}

impl GroupWatch {
    pub fn new(cfg: &Config) -> Result<GroupWatch, KafkaFailure> {
        let admin = base(cfg)
            .create()
            .map_err(super::fail("create the group watch client"))?;
        let group = CString::new(cfg.kafka.group_id.as_str()).map_err(|_| KafkaFailure::Topic {
            topic: "(group)".into(),
            problem: "the group id contains a NUL byte".into(),
        })?;
        Ok(GroupWatch { admin, group })
    }

    /// Partition counts of `topics`, from the cluster's metadata.
    pub fn partitions(
        &self,
        topics: &[String],
        timeout: Duration,
    ) -> Result<BTreeSet<Part>, KafkaFailure> {
        let mut out = BTreeSet::new();
        for topic in topics {
            let md = self
                .admin
                .inner()
                .fetch_metadata(Some(topic), timeout)
                .map_err(super::fail(format!("metadata of {topic}")))?;
            for t in md.topics() {
                out.extend(
                    t.partitions()
                        .iter()
                        .map(|p| (t.name().to_string(), p.id())),
                );
            }
        }
        Ok(out)
    }

    /// The group as the coordinator describes it now.
    pub fn describe(&self, timeout: Duration) -> Result<GroupView, KafkaFailure> {
        let failed = |problem: String| KafkaFailure::Topic {
            topic: "(group)".into(),
            problem,
        };
        let rk = self.admin.inner().native_ptr();
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `rk` is a live client owned by `self.admin`. The options and
        // queue are created and destroyed here; the event owns everything the
        // result points to, and is destroyed only after `read_groups` copied it.
        unsafe {
            let options = rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            );
            let mut errstr = [0 as c_char; 256];
            rd::rd_kafka_AdminOptions_set_request_timeout(
                options,
                ms,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            let queue = rd::rd_kafka_queue_new(rk);
            let mut groups = [self.group.as_ptr()];
            rd::rd_kafka_DescribeConsumerGroups(rk, groups.as_mut_ptr(), 1, options, queue);
            let event = rd::rd_kafka_queue_poll(queue, ms.saturating_add(1000));
            let result = if event.is_null() {
                Err(failed("describing the group timed out".into()))
            } else if rd::rd_kafka_event_error(event)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                Err(failed(format!(
                    "describing the group: {}",
                    text(rd::rd_kafka_event_error_string(event))
                )))
            } else {
                read_groups(rd::rd_kafka_event_DescribeConsumerGroups_result(event)).map_err(failed)
            };
            if !event.is_null() {
                rd::rd_kafka_event_destroy(event);
            }
            rd::rd_kafka_queue_destroy(queue);
            rd::rd_kafka_AdminOptions_destroy(options);
            result
        }
    }
}

/// The member id the coordinator gave `consumer` (empty before it joined).
pub fn member_id<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> String {
    let rk = consumer.client().native_ptr();
    // SAFETY: librdkafka returns a copy (or NULL) that the caller frees.
    unsafe {
        let id = rd::rd_kafka_memberid(rk);
        if id.is_null() {
            return String::new();
        }
        let s = text(id);
        rd::rd_kafka_mem_free(rk, id.cast());
        s
    }
}

/// Copies a C string (NULL → empty).
///
/// # Safety
/// `p` is NULL or a valid NUL-terminated string.
unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: per the function's contract.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// # Safety
/// `list` is NULL or a valid partition list.
unsafe fn parts(list: *const rd::rd_kafka_topic_partition_list_t) -> BTreeSet<Part> {
    let mut out = BTreeSet::new();
    if list.is_null() {
        return out;
    }
    // SAFETY: a valid list holds `cnt` elements at `elems`.
    unsafe {
        let l = &*list;
        for i in 0..usize::try_from(l.cnt).unwrap_or(0) {
            let e = &*l.elems.add(i);
            out.insert((text(e.topic), e.partition));
        }
    }
    out
}

/// # Safety
/// `assignment` is NULL or a valid member assignment.
unsafe fn assignment(assignment: *const rd::rd_kafka_MemberAssignment_t) -> Option<BTreeSet<Part>> {
    if assignment.is_null() {
        return None;
    }
    // SAFETY: per the function's contract.
    Some(unsafe { parts(rd::rd_kafka_MemberAssignment_partitions(assignment)) })
}

/// # Safety
/// `result` is NULL or the result of a DescribeConsumerGroups event still alive.
unsafe fn read_groups(
    result: *const rd::rd_kafka_DescribeConsumerGroups_result_t,
) -> Result<GroupView, String> {
    if result.is_null() {
        return Err("the broker's answer is not a group description".into());
    }
    // SAFETY: every pointer below comes from the live result and is only read.
    unsafe {
        let mut n = 0usize;
        let groups = rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut n);
        if groups.is_null() || n == 0 {
            return Err("the broker described no group".into());
        }
        let g = *groups;
        let err = rd::rd_kafka_ConsumerGroupDescription_error(g);
        if !err.is_null() {
            return Err(text(rd::rd_kafka_error_string(err)));
        }
        let state = rd::rd_kafka_ConsumerGroupDescription_state(g);
        let mut view = GroupView {
            state: text(rd::rd_kafka_consumer_group_state_name(state)),
            members: Vec::new(),
        };
        for i in 0..rd::rd_kafka_ConsumerGroupDescription_member_count(g) {
            let m = rd::rd_kafka_ConsumerGroupDescription_member(g, i);
            if m.is_null() {
                continue;
            }
            let instance = text(rd::rd_kafka_MemberDescription_group_instance_id(m));
            view.members.push(Member {
                member_id: text(rd::rd_kafka_MemberDescription_consumer_id(m)),
                instance_id: (!instance.is_empty()).then_some(instance),
                client_id: text(rd::rd_kafka_MemberDescription_client_id(m)),
                host: text(rd::rd_kafka_MemberDescription_host(m)),
                assigned: assignment(rd::rd_kafka_MemberDescription_assignment(m))
                    .unwrap_or_default(),
                target: assignment(rd::rd_kafka_MemberDescription_target_assignment(m)),
            });
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ps: &[i32]) -> BTreeSet<Part> {
        ps.iter().map(|p| ("t".to_string(), *p)).collect()
    }

    fn member(id: &str, assigned: &[i32], target: Option<&[i32]>) -> Member {
        Member {
            member_id: id.into(),
            assigned: set(assigned),
            target: target.map(set),
            ..Member::default()
        }
    }

    fn view(state: &str, members: Vec<Member>) -> GroupView {
        GroupView {
            state: state.into(),
            members,
        }
    }

    #[test]
    fn a_group_settles_when_everything_has_its_owner() {
        let all = set(&[0, 1]);
        let v = view(
            "Stable",
            vec![member("a", &[0], Some(&[0])), member("b", &[1], Some(&[1]))],
        );
        assert_eq!(v.unsettled("a", &set(&[0]), &all), None);
        // More members than partitions: an empty assignment is settled too.
        let v = view(
            "Stable",
            vec![member("a", &[0, 1], None), member("c", &[], None)],
        );
        assert_eq!(v.unsettled("c", &set(&[]), &all), None);
    }

    #[test]
    fn what_keeps_a_group_from_settling_is_named() {
        let all = set(&[0, 1]);
        let v = view("Unknown", vec![member("a", &[0, 1], None)]);
        assert_eq!(
            v.unsettled("a", &all, &all).as_deref(),
            Some("the group is Unknown")
        );
        let v = view("Stable", vec![member("a", &[0, 1], None)]);
        assert!(
            v.unsettled("b", &set(&[]), &all)
                .unwrap()
                .contains("not a member")
        );
        assert!(
            v.unsettled("a", &set(&[0]), &all)
                .unwrap()
                .contains("still moving")
        );
        // A dead member still holds what the broker moved to us.
        let v = view(
            "Stable",
            vec![
                member("dead", &[0, 1], Some(&[0])),
                member("a", &[], Some(&[1])),
            ],
        );
        assert!(
            v.unsettled("a", &set(&[]), &all)
                .unwrap()
                .contains("target")
        );
        // The coordinator did not know the topic yet: nobody owns anything.
        let v = view("Stable", vec![member("a", &[], Some(&[]))]);
        assert_eq!(
            v.unsettled("a", &set(&[]), &all).as_deref(),
            Some("no member owns t/0, t/1")
        );
    }
}
