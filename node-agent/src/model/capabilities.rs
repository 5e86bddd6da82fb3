//! What the running kernel can do; the planner refuses pools that need what it cannot.

use serde::{Deserialize, Serialize};

/// Tunnel kinds this kernel supports (probed by the kernel layer, never assumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub ipip: bool,
    pub vxlan: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self { ipip: true, vxlan: true }
    }
}
