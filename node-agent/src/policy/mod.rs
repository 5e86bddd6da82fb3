//! Network policy: Kubernetes NetworkPolicy and Trellis' GlobalNetworkPolicy (Calico's shape),
//! enforced for this node's pods in one nftables table of its own, `inet trellis-policy`.
//!
//! * [`inputs`]: what the compiler reads (pods, namespaces, policies, this node's pods and
//!   their host-side interfaces);
//! * [`compile`] (pure): inputs → [`ruleset::Ruleset`], with [`kubernetes`] and [`global`]
//!   for the two kinds of policy, [`label_selector`] for Kubernetes selectors and [`rule`] for
//!   single nft rules;
//! * [`ruleset`] (pure): the table's content and the nft scripts between two contents (element
//!   updates or one atomic replacement);
//! * [`apply`]: runs the scripts and repairs drift;
//! * [`problem`]: what the compiler could not enforce, per policy object; [`events`] reports it
//!   as Warning Events on the object, once per policy generation across all nodes;
//! * [`cluster`] and [`enforcer`]: the inputs from the Kubernetes API and the agent's loop.

pub mod apply;
pub mod cluster;
pub mod compile;
pub mod enforcer;
pub mod events;
pub mod global;
pub mod inputs;
pub mod kubernetes;
pub mod label_selector;
pub mod problem;
pub mod rule;
pub mod ruleset;

#[cfg(test)]
mod tests;

pub use compile::{Compiled, compile};
pub use inputs::{LocalPod, NamedPort, Pod, PolicyInputs};
pub use ruleset::Ruleset;
