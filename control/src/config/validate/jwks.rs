//! Structural check of an inline JWK Set (RFC 7517/7518): JSON, a `keys`
//! array, and per key type the members a verifier needs. Key material is
//! only checked to be base64url, never interpreted here.

use serde_json::Value;

pub fn validate_jwks(text: &str) -> Result<(), String> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| format!("inline jwks is not JSON: {e}"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("inline jwks must be a JSON object with a \"keys\" array")?;
    if keys.is_empty() {
        return Err("inline jwks has an empty \"keys\" array".into());
    }
    for (i, key) in keys.iter().enumerate() {
        check_key(key).map_err(|why| format!("inline jwks keys[{i}]: {why}"))?;
    }
    Ok(())
}

fn check_key(key: &Value) -> Result<(), String> {
    let obj = key.as_object().ok_or("is not a JSON object")?;
    let kty = obj
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("has no \"kty\"")?;
    let required: &[&str] = match kty {
        "RSA" => &["n", "e"],
        "EC" => &["crv", "x", "y"],
        "OKP" => &["crv", "x"],
        "oct" => &["k"],
        other => {
            return Err(format!(
                "unknown kty {other:?} (expected RSA, EC, OKP or oct)"
            ))
        }
    };
    for member in required {
        let value = obj
            .get(*member)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("{kty} key lacks {member:?}"))?;
        if *member != "crv" && !is_base64url(value) {
            return Err(format!("{kty} key member {member:?} is not base64url"));
        }
    }
    Ok(())
}

fn is_base64url(s: &str) -> bool {
    !s.is_empty()
        && s.trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_rsa_and_ec_sets() {
        let set = r#"{"keys":[{"kty":"RSA","e":"AQAB","n":"xGOr-H7A-PWG3v0"},{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        assert!(validate_jwks(set).is_ok());
    }

    #[test]
    fn rejects_broken_sets() {
        for bad in [
            "not json",
            "{}",
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"RSA","e":"AQAB"}]}"#,
            r#"{"keys":[{"kty":"XYZ"}]}"#,
            r#"{"keys":[{"kty":"oct","k":"has spaces!"}]}"#,
        ] {
            assert!(validate_jwks(bad).is_err(), "{bad} should be rejected");
        }
    }
}
