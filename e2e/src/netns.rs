//! Network namespaces: the test bed uses the one guard every Trellis root test shares,
//! [`trellis_testkit::netns`] (created with a unique name, entered on a thread of its own,
//! emptied and deleted on drop, also while a failing test unwinds).

pub use trellis_testkit::netns::*;
