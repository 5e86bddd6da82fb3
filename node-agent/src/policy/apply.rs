//! Applies a [`Ruleset`] to the kernel: `nft -f` of one script per change, so each change is
//! one nftables transaction (all or nothing, packets see the old or the new table).
//!
//! [`PolicyTable::sync`] keeps what it applied last together with the kernel's own listing of
//! the table right after (`nft -j list table`, handles dropped, set elements sorted). Every
//! sync lists the table again: if the listing is still the one it left, only the difference
//! to the new ruleset is applied (element adds/deletes when possible); if anything else
//! changed the table (or it is gone, or this is the first sync of the process) the table is
//! replaced as a whole. So drift is repaired by the next sync, which the agent runs on every
//! nftables notification about the table.

use std::io::Write as _;
use std::process::{Command, Stdio};

use serde_json::Value;

use super::ruleset::{Ruleset, TABLE, Update};

/// Running nft failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the nft program is not installed (needed for network policy): {0}")]
    NftMissing(String),
    #[error("cannot list nftables table inet {TABLE}: {0}")]
    Read(String),
    #[error("cannot update nftables table inet {TABLE}: {0}")]
    Apply(String),
}

/// What a sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    /// Set/map elements added and deleted.
    Elements {
        added: usize,
        deleted: usize,
    },
    /// The table was replaced: why.
    Replaced(Reason),
}

/// Why the table was replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// First sync of this process (what is there was not made by it).
    Start,
    /// The table differs from what this process left (someone changed it).
    Drift,
    /// Chains or sets changed.
    Policy,
}

fn nft(args: &[&str], input: Option<&str>) -> Result<String, (bool, String)> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (e.kind() == std::io::ErrorKind::NotFound, e.to_string()))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|e| (false, format!("writing the script to nft: {e}")))?;
    }
    let out = child.wait_with_output().map_err(|e| (false, e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err((false, String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

/// Handles dropped, set elements sorted: equal tables list equal.
fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("handle");
            if let Some(Value::Array(elements)) = map.get_mut("elem") {
                elements.sort_by_key(|e| e.to_string());
            }
            map.values_mut().for_each(normalize);
        }
        Value::Array(items) => {
            items.retain(|i| i.get("metainfo").is_none());
            items.iter_mut().for_each(normalize);
        }
        _ => {}
    }
}

/// The table as the kernel lists it (normalized), `None` when there is none.
pub fn listing() -> Result<Option<Value>, ApplyError> {
    match nft(&["-j", "list", "table", "inet", TABLE], None) {
        Ok(text) => {
            let mut value: Value = serde_json::from_str(&text).map_err(|e| ApplyError::Read(e.to_string()))?;
            normalize(&mut value);
            Ok(Some(value))
        }
        Err((true, e)) => Err(ApplyError::NftMissing(e)),
        Err((false, e)) if e.contains("No such file or directory") => Ok(None),
        Err((false, e)) => Err(ApplyError::Read(e)),
    }
}

fn run(script: &str) -> Result<(), ApplyError> {
    nft(&["-f", "/dev/stdin"], Some(script))
        .map(|_| ())
        .map_err(|(missing, e)| if missing { ApplyError::NftMissing(e) } else { ApplyError::Apply(e) })
}

/// Deletes the table (if any) in one transaction.
pub fn remove() -> Result<(), ApplyError> {
    run(&format!("add table inet {TABLE}\ndelete table inet {TABLE}\n"))
}

/// What this process applied and how the kernel listed it right after.
struct Applied {
    ruleset: Ruleset,
    listing: Option<Value>,
}

/// The policy table of the calling thread's network namespace (nft runs as a child process,
/// which inherits it).
#[derive(Default)]
pub struct PolicyTable {
    applied: Option<Applied>,
}

impl PolicyTable {
    pub fn new() -> PolicyTable {
        PolicyTable::default()
    }

    /// Makes the kernel's table equal `desired`.
    pub fn sync(&mut self, desired: &Ruleset) -> Result<Outcome, ApplyError> {
        let current = listing()?;
        let outcome = match &self.applied {
            Some(applied) if applied.listing == current => match desired.update_from(&applied.ruleset) {
                Update::None => return Ok(Outcome::Unchanged),
                Update::Elements { script, added, deleted } => match run(&script) {
                    Ok(()) => Outcome::Elements { added, deleted },
                    Err(e) => {
                        // Someone changed the table between the listing and the update.
                        tracing::warn!(error = %e, "element update of table inet {TABLE} failed; replacing the table");
                        self.replace(desired, Reason::Drift)?
                    }
                },
                Update::Replace(_) => self.replace(desired, Reason::Policy)?,
            },
            Some(_) => self.replace(desired, Reason::Drift)?,
            None => self.replace(desired, Reason::Start)?,
        };
        self.applied = Some(Applied { ruleset: desired.clone(), listing: listing()? });
        Ok(outcome)
    }

    fn replace(&mut self, desired: &Ruleset, reason: Reason) -> Result<Outcome, ApplyError> {
        // Until it succeeds nothing is known about the kernel's table.
        self.applied = None;
        run(&desired.replace_script())?;
        Ok(Outcome::Replaced(reason))
    }
}
