//! `isthmus demo`, the README's run command, unattended: traffic through
//! us-west's ingress gateway reaches reviews, the printed URL answers while
//! the demo runs, the failover scenario passes with no failed request, and
//! a run that ends before the kill exits non-zero.
//!
//! The demo uses the fixed blocks of deploy/examples (127.11–13.0.0/16), so
//! the two runs here go one after the other.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use isthmus_multicluster_tests::binary::isthmus_for_tests;
use isthmus_multicluster_tests::load::{request_answer, LoadConfig};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The demo process; SIGTERM on drop (the demo then stops every cluster it
/// started), SIGKILL if it does not exit in time.
struct Demo {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
}

impl Demo {
    fn start(state: &std::path::Path, args: &[&str]) -> Demo {
        let bin = isthmus_for_tests().unwrap();
        let mut child = Command::new(bin)
            .arg("demo")
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("demo| {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Demo {
            child,
            lines,
            output: Vec::new(),
        }
    }

    /// The next line containing `what`, within `limit`.
    fn line_with(&mut self, what: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.output.push(l.clone());
                    if l.contains(what) {
                        return Some(l);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits for the exit (reading the rest of the output).
    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            while let Ok(l) = self.lines.try_recv() {
                self.output.push(l);
            }
            if let Some(s) = self.child.try_wait().unwrap() {
                // The reader thread ends with the pipe; collect its last lines.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
                    self.output.push(l);
                }
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn text(&self) -> String {
        self.output.join("\n")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_through_the_ingress_fails_over_and_reports_failures() {
    let state = tempfile::tempdir().unwrap();
    let mut demo = Demo::start(
        state.path(),
        &[
            "--duration",
            "26s",
            "--scenario",
            "failover",
            "--kill-after",
            "6s",
            "--down-for",
            "8s",
        ],
    );
    let ready = demo
        .line_with("ready. Try: curl ", Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the demo never got ready:\n{}", demo.text()));
    let url = ready
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    assert_eq!(addr.to_string(), "127.12.0.3:8080", "not us-west's ingress");
    // The printed URL answers: ingress → productpage → reviews.
    let answer = request_answer(&LoadConfig::new(addr, "curl", 1.0))
        .await
        .unwrap();
    assert_eq!(answer.identity.service, "productpage");
    assert_eq!(answer.identity.cluster, "us-west");
    assert_eq!(answer.last().service, "reviews");

    let status = demo.wait(Duration::from_secs(120));
    let text = demo.text();
    assert!(status.success(), "exit {status}:\n{text}");
    assert!(text.contains(", 0 failed,"), "{text}");
    assert!(
        text.contains("failover: first request after the kill answered by eu-central"),
        "{text}"
    );
    assert!(text.contains("failback: traffic back in us-east"), "{text}");
    for version in ["v1", "v2"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with("us-east") && l.contains(version)),
            "no us-east {version} in the summary:\n{text}"
        );
    }
    assert!(text.contains("stopped; nothing left running"), "{text}");
    drop(demo);

    // A run that ends before the kill did not show the failover: non-zero.
    let mut short = Demo::start(
        state.path(),
        &[
            "--duration",
            "2s",
            "--scenario",
            "failover",
            "--kill-after",
            "30s",
        ],
    );
    let status = short.wait(Duration::from_secs(120));
    let text = short.text();
    assert!(!status.success(), "{text}");
    assert!(text.contains("FAIL: the failover did not happen"), "{text}");
}
