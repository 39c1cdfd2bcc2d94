//! What a conformance case is: the caller and transport, the request,
//! and the expected decision; plus the AuthorizationPolicy YAML builder
//! the case tables use.

const HOST: &str = "echo.default.svc.cluster.local";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy)]
pub enum Via {
    /// HTTP/1.1 over mTLS as this SPIFFE ID.
    Mtls(&'static str),
    /// HTTP/1.1 in plaintext (no principal).
    Plain,
    /// Raw TCP over mTLS as this SPIFFE ID.
    Tcp(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub via: Via,
    pub method: &'static str,
    pub path: &'static str,
    pub host: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    pub expect: Expect,
}

pub const fn http(
    name: &'static str,
    via: Via,
    method: &'static str,
    path: &'static str,
    expect: Expect,
) -> Case {
    Case {
        name,
        via,
        method,
        path,
        host: HOST,
        headers: &[],
        expect,
    }
}

pub const fn tcp(name: &'static str, id: &'static str, expect: Expect) -> Case {
    Case {
        name,
        via: Via::Tcp(id),
        method: "",
        path: "",
        host: "",
        headers: &[],
        expect,
    }
}

pub fn policy(ns: &str, name: &str, spec: &str) -> String {
    let mut out = format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
    );
    for line in spec.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}
