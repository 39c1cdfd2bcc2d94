//! Waiting for conditions with deadlines: tests never sleep for a fixed time
//! and hope; they poll a condition until it holds or the deadline passes.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
#[error("timed out after {waited:?} waiting for {what}: {last}")]
pub struct Timeout {
    pub what: String,
    pub waited: Duration,
    /// Why the condition did not hold the last time it was checked.
    pub last: String,
}

/// Polls `check` every `interval` until it returns `Ok`, or fails with the last
/// error once `limit` has passed.
pub async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T, Timeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let interval = Duration::from_millis(50);
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(last) => {
                if start.elapsed() >= limit {
                    return Err(Timeout {
                        what: what.to_string(),
                        waited: start.elapsed(),
                        last,
                    });
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_once_condition_holds() {
        let mut n = 0;
        let v = until("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            let cur = n;
            async move {
                if cur >= 3 {
                    Ok(cur)
                } else {
                    Err(format!("n is {cur}"))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn times_out_with_last_reason() {
        let err = until::<(), _, _>("never", Duration::from_millis(120), || async {
            Err("still false".to_string())
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("still false"), "{err}");
    }
}
