//! Child processes owned by a test or the demo. Every process is killed when
//! its handle is dropped, so a failing test leaves nothing running behind it.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        source: std::io::Error,
    },
    #[error("cannot open log file {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot signal {name}: {source}")]
    Signal { name: String, source: nix::Error },
}

/// How to start one process; kept so the process can be restarted as it was.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    /// stdout and stderr go here (appended across restarts).
    pub log: PathBuf,
}

impl Spec {
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, log_dir: &Path) -> Self {
        let name = name.into();
        let log = log_dir.join(format!("{name}.log"));
        Spec {
            name,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A running (or stopped) child process.
pub struct Managed {
    spec: Spec,
    child: Option<Child>,
}

impl Managed {
    pub fn start(spec: Spec) -> Result<Self, ProcessError> {
        let mut m = Managed { spec, child: None };
        m.spawn()?;
        Ok(m)
    }

    fn spawn(&mut self) -> Result<(), ProcessError> {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.spec.log)
                .map_err(|source| ProcessError::Log {
                    path: self.spec.log.clone(),
                    source,
                })
        };
        let (out, err) = (open()?, open()?);
        let mut cmd = Command::new(&self.spec.program);
        // Log files are read by people and tests: no colour codes.
        cmd.args(&self.spec.args)
            .env("NO_COLOR", "1")
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: self.spec.name.clone(),
            program: self.spec.program.display().to_string(),
            source,
        })?;
        self.child = Some(child);
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&self, sig: Signal) -> Result<(), ProcessError> {
        if let Some(pid) = self.pid() {
            let pid = i32::try_from(pid).unwrap_or(i32::MAX);
            kill(Pid::from_raw(pid), sig).map_err(|source| ProcessError::Signal {
                name: self.spec.name.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Sends SIGKILL without waiting, so several processes can die at the
    /// same instant (a whole cluster); [`Managed::kill`] reaps them after.
    pub fn start_kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }

    /// kill -9 and reap: the crash a real machine failure looks like.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// SIGTERM, then SIGKILL if the process has not exited within `grace`.
    pub async fn stop(&mut self, grace: std::time::Duration) -> Result<(), ProcessError> {
        self.signal(Signal::SIGTERM)?;
        if let Some(mut c) = self.child.take() {
            if tokio::time::timeout(grace, c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
        Ok(())
    }

    /// Freeze the process (SIGSTOP): it holds its sockets but answers nothing,
    /// like a machine that hangs rather than dies.
    pub fn pause(&self) -> Result<(), ProcessError> {
        self.signal(Signal::SIGSTOP)
    }

    pub fn resume(&self) -> Result<(), ProcessError> {
        self.signal(Signal::SIGCONT)
    }

    /// Start again with the same command line, after a kill or stop.
    pub async fn restart(&mut self) -> Result<(), ProcessError> {
        self.kill().await;
        self.spawn()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.spec.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn kill_restart_and_drop_leave_nothing_running() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec::new("sleeper", "sleep", dir.path()).arg("30");
        let mut p = Managed::start(spec).unwrap();
        let first = p.pid().unwrap();
        assert!(p.is_running());
        p.restart().await.unwrap();
        let second = p.pid().unwrap();
        assert_ne!(first, second);
        assert!(!Path::new(&format!("/proc/{first}")).exists() || zombie(first));
        drop(p);
        crate::wait::until("dropped child exits", Duration::from_secs(5), || async {
            if Path::new(&format!("/proc/{second}")).exists() && !zombie(second) {
                Err("still running".into())
            } else {
                Ok(())
            }
        })
        .await
        .unwrap();
    }

    fn zombie(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.contains(") Z "))
            .unwrap_or(true)
    }

    #[tokio::test]
    async fn stop_sends_sigterm_then_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec::new("sleeper", "sleep", dir.path()).arg("30");
        let mut p = Managed::start(spec).unwrap();
        p.stop(Duration::from_secs(5)).await.unwrap();
        assert!(!p.is_running());
    }
}
