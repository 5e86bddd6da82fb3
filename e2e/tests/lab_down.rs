//! `make lab-down` after a lab that was killed outright (SIGKILL: no destructor, no signal
//! handler ran) removes everything the lab had created: its containers, network namespaces,
//! API server processes and files. Checked with podman, `ip netns` and /proc directly, not
//! with the lab's own leftover listing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use trellis_e2e::lab::cleanup::{NETNS_PREFIX, WORK_DIR};
use trellis_e2e::podman;

const LAB: &str = env!("CARGO_BIN_EXE_lab");

fn lab_namespaces() -> Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NETNS_PREFIX))
        .map(str::to_string)
        .collect())
}

fn lab_containers() -> Result<Vec<String>> {
    let out = podman::podman(&["ps", "-a", "--format", "{{.Names}}"])?;
    Ok(out.lines().filter(|n| n.contains(NETNS_PREFIX)).map(str::to_string).collect())
}

/// Processes whose command line names the lab's work dir (the API server, etcd).
fn lab_processes() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| {
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            line.contains(WORK_DIR).then(|| format!("{} {line}", e.file_name().to_string_lossy()))
        })
        .collect()
}

#[test]
#[ignore = "root: podman, helm, a private API server, network namespaces"]
fn lab_down_after_a_killed_lab_leaves_nothing_behind() -> Result<()> {
    ensure!(
        !std::path::Path::new(WORK_DIR).exists() && lab_namespaces()?.is_empty(),
        "a lab runs or was left on this machine ({WORK_DIR}, {NETNS_PREFIX}* namespaces): this test needs it gone"
    );
    let mut lab = Command::new(LAB).arg("--no-vm").stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdout = lab.stdout.take().context("the lab's stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Until the cluster is up and its pods exist: then everything the lab makes is there.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("pod-c on node3") => break,
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = lab.kill();
                let _ = lab.wait();
                let _ = Command::new(LAB).arg("down").status();
                bail!("the lab did not bring its cluster up:\n{}", seen.join("\n"));
            }
        }
    }
    ensure!(!lab_namespaces()?.is_empty(), "the running lab has no namespaces: nothing to test");
    ensure!(!lab_containers()?.is_empty(), "the running lab has no containers: nothing to test");
    ensure!(!lab_processes().is_empty(), "the running lab's API server does not name {WORK_DIR}");
    lab.kill()?;
    lab.wait()?;
    // Killed outright: everything is still there.
    ensure!(!lab_namespaces()?.is_empty(), "namespaces vanished without lab-down");

    let down = Command::new(LAB).arg("down").output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&down.stdout), String::from_utf8_lossy(&down.stderr));
    ensure!(down.status.success(), "lab down failed:\n{text}");
    ensure!(lab_namespaces()?.is_empty(), "namespaces left: {:?}\n{text}", lab_namespaces()?);
    ensure!(lab_containers()?.is_empty(), "containers left: {:?}\n{text}", lab_containers()?);
    ensure!(lab_processes().is_empty(), "processes left: {:?}\n{text}", lab_processes());
    ensure!(!std::path::Path::new(WORK_DIR).exists(), "{WORK_DIR} left\n{text}");
    // A second lab-down finds nothing and succeeds.
    let again = Command::new(LAB).arg("down").output()?;
    ensure!(again.status.success(), "a second lab down failed");
    ensure!(String::from_utf8_lossy(&again.stdout).contains("nothing of the lab is left"));
    Ok(())
}
