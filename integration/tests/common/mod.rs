//! What the fleet tests share: the simulated fleet (`devicesim`) against
//! the platform `scripts/platform` runs, its report, and the services' pids.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use context_integration::repo_root;

pub fn devicesim() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_devicesim"));
    cmd.current_dir(repo_root());
    cmd
}

/// A fleet of 4 devices against the platform's gateway with its key.
pub fn fleet(state: &Path, extra: &[&str]) -> Child {
    let key = std::fs::read_to_string(repo_root().join(".stack/platform/api-key")).expect("the platform's key");
    devicesim()
        .args(["run", "--key", key.trim(), "--state"])
        .arg(state)
        .args(["--devices", "4", "--events", "5-20", "--max-seconds", "600"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting devicesim")
}

/// Waits for a fleet; its report. Fails when the run did.
pub fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().expect("waiting for devicesim");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: devicesim run failed:\n{text}");
    text
}

/// Stops a fleet with SIGINT (as Ctrl-C): it sends nothing more and leaves
/// what is unsent queued; its report.
pub fn interrupt(mut child: Child) -> String {
    kill("-INT", &child.id().to_string());
    let _ = child.wait();
    let mut out = String::new();
    use std::io::Read;
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out
}

/// Fails unless the fleet still runs: a fault without load proves nothing.
pub fn still_running(child: &mut Child, before: &str) {
    assert!(
        child.try_wait().unwrap().is_none(),
        "the fleet stopped before {before}; the faults would not be under load"
    );
}

/// The count of `status` in a report's "answers by status {200: n, ...}".
pub fn answers(report: &str, status: u16) -> u64 {
    report
        .split("answers by status ")
        .nth(1)
        .and_then(|r| r.split(&format!("{status}: ")).nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(0)
}

pub fn pid(service: &str) -> String {
    std::fs::read_to_string(repo_root().join(format!(".stack/platform/{service}.pid")))
        .expect("a pid file")
        .trim()
        .to_owned()
}

pub fn kill(signal: &str, pid: &str) {
    let status = Command::new("kill").args([signal, pid]).status().expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

pub fn pause(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

/// `devicesim verify`: every acknowledged event stored once, every motion
/// event tagged (it waits up to 300 s for the chain to catch up).
pub fn verify(state: &Path) {
    let out = devicesim()
        .args(["verify", "--wait", "300", "--state"])
        .arg(state)
        .output()
        .expect("devicesim verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "devicesim verify found losses:\n{text}");
    assert!(text.contains("verify: OK"), "{text}");
}
