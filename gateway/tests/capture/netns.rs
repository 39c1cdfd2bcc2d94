//! The harness around the namespaces: running commands, the prerequisite
//! check, the `pod`/`net` network namespaces joined by a veth pair (with the
//! injector's iptables rules in `pod`), and running code inside a namespace.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::{NET_IP, POD_IP};

/// Network namespaces deleted on drop (their veth goes with them).
pub(crate) struct Namespaces(pub(crate) Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(cmd: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut c = Command::new(cmd[0]);
    c.args(&cmd[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().map_err(|e| format!("{cmd:?}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{cmd:?}: writing stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Why this machine cannot run the test, if it cannot.
pub(crate) fn missing_prerequisite() -> Option<String> {
    if nix::unistd::geteuid().as_raw() != 0 {
        return Some("must run as root (network namespaces, iptables)".into());
    }
    for tool in ["ip", "iptables-restore"] {
        if Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!(
                "{tool} is not installed (apt-get install iproute2 iptables)"
            ));
        }
    }
    None
}

/// Runs `f` on a thread inside network namespace `ns`; sockets it creates
/// (and processes it spawns) live in that namespace.
pub(crate) fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}
pub(crate) fn setup_namespaces(tag: &str) -> Result<Namespaces, String> {
    let pod = format!("isthmus-cap-{tag}-pod");
    let net = format!("isthmus-cap-{tag}-net");
    let mut guard = Namespaces(Vec::new());
    for ns in [&pod, &net] {
        run(&["ip", "netns", "add", ns], None)?;
        guard.0.push(ns.clone());
        run(&["ip", "-n", ns, "link", "set", "lo", "up"], None)?;
    }
    let (vp, vn) = (format!("vcp{tag}"), format!("vcn{tag}"));
    run(
        &[
            "ip", "-n", &pod, "link", "add", &vp, "type", "veth", "peer", "name", &vn, "netns",
            &net,
        ],
        None,
    )?;
    run(
        &[
            "ip",
            "-n",
            &pod,
            "addr",
            "add",
            &format!("{POD_IP}/24"),
            "dev",
            &vp,
        ],
        None,
    )?;
    run(
        &[
            "ip",
            "-n",
            &net,
            "addr",
            "add",
            &format!("{NET_IP}/24"),
            "dev",
            &vn,
        ],
        None,
    )?;
    run(&["ip", "-n", &pod, "link", "set", &vp, "up"], None)?;
    run(&["ip", "-n", &net, "link", "set", &vn, "up"], None)?;
    // Service addresses (10.96.0.0/12 style) are only routed, never owned.
    run(
        &["ip", "-n", &pod, "route", "add", "default", "via", NET_IP],
        None,
    )?;
    // The injector's init container rules, exactly as rendered for a pod
    // without capture annotations.
    let rules = isthmus_control::inject::capture::CaptureRules::from_annotations(&BTreeMap::new())
        .map_err(|e| e.to_string())?
        .iptables_restore();
    run(
        &["ip", "netns", "exec", &pod, "iptables-restore"],
        Some(&rules),
    )?;
    Ok(guard)
}
