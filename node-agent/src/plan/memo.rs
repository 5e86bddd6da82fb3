//! The last plan and the inputs it was made from.
//!
//! Planning is pure (the snapshot, the uplink MTU and the capabilities are all it reads), so
//! equal inputs give an equal plan: a pass whose inputs did not change — every periodic resync
//! on a quiet cluster — reuses the last plan instead of planning thousands of peers again.
//! Comparing the inputs costs a small fraction of planning them. The kernel's state is still
//! read and compared in full by every pass: the memo never hides drift.

use std::sync::Arc;

use super::{PlanError, plan};
use crate::model::{Capabilities, DesiredState};
use crate::snapshot::Snapshot;

/// Inputs of the last successful plan and its result.
struct Planned {
    snapshot: Snapshot,
    uplink_mtu: Option<u32>,
    caps: Capabilities,
    desired: Arc<DesiredState>,
}

/// See the module comment.
#[derive(Default)]
pub struct PlanMemo {
    last: Option<Planned>,
}

impl PlanMemo {
    /// The plan of `snapshot` with its uplink MTU set to `uplink_mtu` (what the kernel says when
    /// the snapshot does not), against `caps`: the last one when the inputs are the same.
    pub fn plan(
        &mut self,
        snapshot: &Snapshot,
        uplink_mtu: Option<u32>,
        caps: Capabilities,
    ) -> Result<Arc<DesiredState>, PlanError> {
        if let Some(last) = &self.last
            && last.caps == caps
            && last.uplink_mtu == uplink_mtu
            && last.snapshot == *snapshot
        {
            return Ok(Arc::clone(&last.desired));
        }
        self.last = None;
        let mut input = snapshot.clone();
        input.node.uplink_mtu = uplink_mtu;
        let desired = Arc::new(plan(&input, caps)?);
        self.last = Some(Planned { snapshot: snapshot.clone(), uplink_mtu, caps, desired: Arc::clone(&desired) });
        Ok(desired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Snapshot;

    const SNAPSHOT: &str = r#"
node:
  name: node1
  address: 192.168.1.10/24
  uplink: eth0
  blocks: [10.244.1.0/26]
peers:
  - name: node2
    address: 192.168.1.11/24
    blocks: [10.244.2.0/26]
pools:
  - name: default
    cidr: 10.244.0.0/16
    vxlanMode: Always
"#;

    fn snapshot() -> Snapshot {
        serde_yaml::from_str(SNAPSHOT).unwrap()
    }

    #[test]
    fn equal_inputs_reuse_the_plan_and_any_change_plans_again() {
        let mut memo = PlanMemo::default();
        let caps = Capabilities::default();
        let first = memo.plan(&snapshot(), Some(1500), caps).unwrap();
        let again = memo.plan(&snapshot(), Some(1500), caps).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "same inputs: the same plan, not planned again");

        let mtu = memo.plan(&snapshot(), Some(9000), caps).unwrap();
        assert!(!Arc::ptr_eq(&first, &mtu));
        assert_eq!(mtu.vxlan.as_ref().unwrap().mtu, 8950, "a new uplink MTU is planned");

        let mut peer_moved = snapshot();
        peer_moved.peers[0].address = "192.168.1.12/24".parse().unwrap();
        let moved = memo.plan(&peer_moved, Some(9000), caps).unwrap();
        assert_eq!(moved.fdb[0].dst.to_string(), "192.168.1.12", "a changed peer is planned");

        let no_vxlan = Capabilities { vxlan: false, ..caps };
        let without = memo.plan(&peer_moved, Some(9000), no_vxlan).unwrap();
        assert!(without.vxlan.is_none(), "new capabilities are planned: {without:?}");
        assert_eq!(*memo.plan(&snapshot(), Some(1500), caps).unwrap(), *first, "equal to a fresh plan");
    }

    #[test]
    fn a_failed_plan_is_not_remembered() {
        let mut memo = PlanMemo::default();
        let caps = Capabilities::default();
        let good = memo.plan(&snapshot(), Some(1500), caps).unwrap();
        let mut bad = snapshot();
        bad.peers.push(bad.peers[0].clone());
        assert!(matches!(memo.plan(&bad, Some(1500), caps), Err(PlanError::DuplicatePeer(_))));
        let after = memo.plan(&snapshot(), Some(1500), caps).unwrap();
        assert!(!Arc::ptr_eq(&good, &after), "planned again after a failure");
        assert_eq!(*good, *after);
    }
}
