//! trellis-testkit: what every root test of Trellis shares.
//!
//! [`Netns`] is the one network-namespace helper (as flannel keeps one in `pkg/ns`): the node
//! agent's netlink, nftables and CLI tests and the e2e test bed all create, enter and delete
//! their namespaces through it. Errors are values ([`Error`]) so library code of the test bed
//! can propagate them; tests unwrap. [`cmd`] runs the tools (iproute2, nft, …) the tests check
//! the kernel with.

pub mod cmd;
pub mod error;
pub mod netns;

pub use error::{Error, Result};
pub use netns::Netns;
