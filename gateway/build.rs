//! Link the proxy binary with packed relative relocations (DT_RELR) where the
//! C library can load them.
//!
//! A position-independent executable carries one 24-byte relocation record
//! per pointer in its data (vtables, static tables): about 530 KB here. The
//! dynamic loader reads all of it at startup, so it stays resident in every
//! sidecar. RELR encodes the same relocations as a bitmap (about 7 KB) and
//! keeps ASLR, unlike a non-PIE build. glibc loads RELR from 2.36 on
//! (Debian 12, Ubuntu 24.04); a binary linked this way refuses to start on an
//! older glibc, so the flag is only passed when the build host, which is
//! also the target, has one that can.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let native = var("HOST") == var("TARGET");
    if native
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && host_glibc().is_some_and(|v| v >= (2, 36))
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// The build host's glibc version, from `getconf GNU_LIBC_VERSION`
/// ("glibc 2.36").
fn host_glibc() -> Option<(u32, u32)> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    parse_glibc(std::str::from_utf8(&out.stdout).ok()?)
}

fn parse_glibc(s: &str) -> Option<(u32, u32)> {
    let version = s.trim().strip_prefix("glibc ")?;
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}
