//! Per-pool encapsulation mode, Calico's `ipipMode` / `vxlanMode` values.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// When traffic between nodes is encapsulated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub enum EncapMode {
    /// Never encapsulate: pod traffic is routed directly between nodes.
    #[default]
    Never,
    /// Always encapsulate.
    Always,
    /// Encapsulate only towards nodes outside this node's subnet.
    CrossSubnet,
}

impl EncapMode {
    /// True unless the mode is `Never`.
    pub fn is_enabled(self) -> bool {
        !matches!(self, EncapMode::Never)
    }
}

impl std::fmt::Display for EncapMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EncapMode::Never => "Never",
            EncapMode::Always => "Always",
            EncapMode::CrossSubnet => "CrossSubnet",
        })
    }
}
