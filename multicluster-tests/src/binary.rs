//! Finding the `isthmus` binary the harness runs.
//!
//! The demo passes its own executable. Tests call [`isthmus_for_tests`],
//! which honours `ISTHMUS_BIN` and otherwise runs `cargo build -p
//! isthmus-control --bin isthmus` into the target directory the test
//! binary itself lives in (same profile), so a plain `cargo test
//! --workspace` on a clean checkout works and never runs a stale binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[derive(Debug, Clone, thiserror::Error)]
pub enum BinaryError {
    #[error("ISTHMUS_BIN={0} does not exist")]
    Missing(PathBuf),
    #[error("cannot tell the target directory from the test executable {0}; set ISTHMUS_BIN")]
    Layout(PathBuf),
    #[error("cannot run cargo ({cargo}) to build the isthmus binary: {reason}; set ISTHMUS_BIN to a built binary")]
    Cargo { cargo: String, reason: String },
    #[error("`cargo build -p isthmus-control --bin isthmus` failed:\n{0}")]
    Build(String),
}

/// The target directory and profile of a test executable at
/// `<target>/<profile-dir>/deps/<name>`.
fn layout(exe: &Path) -> Option<(PathBuf, String)> {
    let deps = exe.parent()?;
    if deps.file_name()? != "deps" {
        return None;
    }
    let profile_dir = deps.parent()?;
    let target = profile_dir.parent()?;
    let name = profile_dir.file_name()?.to_str()?;
    // `debug` is the directory of the `dev` (and `test`) profile.
    let profile = if name == "debug" { "dev" } else { name };
    Some((target.to_path_buf(), profile.to_string()))
}

fn build() -> Result<PathBuf, BinaryError> {
    if let Some(p) = std::env::var_os("ISTHMUS_BIN") {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(p)
        } else {
            Err(BinaryError::Missing(p))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| BinaryError::Layout(PathBuf::from(e.to_string())))?;
    let (target, profile) = layout(&exe).ok_or_else(|| BinaryError::Layout(exe.clone()))?;
    let cargo = std::env::var("CARGO")
        .ok()
        .or_else(|| option_env!("CARGO").map(str::to_string))
        .unwrap_or_else(|| "cargo".to_string());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let out = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "isthmus-control",
            "--bin",
            "isthmus",
            "--profile",
        ])
        .arg(&profile)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .output()
        .map_err(|e| BinaryError::Cargo {
            cargo: cargo.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(BinaryError::Build(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| BinaryError::Layout(exe.clone()))?;
    Ok(dir.join("isthmus"))
}

/// The binary for tests, built at most once per test process.
pub fn isthmus_for_tests() -> Result<PathBuf, BinaryError> {
    static BIN: OnceLock<Result<PathBuf, BinaryError>> = OnceLock::new();
    BIN.get_or_init(build).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_maps_debug_to_dev() {
        let (t, p) = layout(Path::new("/w/target/debug/deps/scenario-abc")).unwrap();
        assert_eq!(t, Path::new("/w/target"));
        assert_eq!(p, "dev");
        let (_, p) = layout(Path::new("/w/target/release/deps/x")).unwrap();
        assert_eq!(p, "release");
        assert!(layout(Path::new("/usr/bin/x")).is_none());
    }
}
