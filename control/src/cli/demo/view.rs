//! Rendering the demo's view: a table redrawn every second on a terminal,
//! one plain line per second otherwise.

use std::fmt::Write as _;
use std::time::Duration;

use isthmus_multicluster_tests::Summary;

#[derive(Debug, Clone)]
pub struct Event {
    pub at: Duration,
    pub text: String,
}

/// Requests of the last second that landed in one cluster and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub cluster: String,
    pub version: String,
    pub count: usize,
}

pub struct Frame<'a> {
    pub elapsed: Duration,
    pub rows: Vec<Row>,
    /// The last second.
    pub window: &'a Summary,
    /// Since the start.
    pub total: &'a Summary,
    /// (cluster, lease expired) as us-west's control plane sees them.
    pub leases: &'a [(String, bool)],
    pub events: &'a [Event],
    /// How many of `events` earlier lines already printed.
    pub printed_events: usize,
    pub url: &'a str,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bar(share: f64) -> String {
    let n = (share * 30.0).round() as usize;
    "#".repeat(n.min(30))
}

fn lease_text(leases: &[(String, bool)]) -> String {
    leases
        .iter()
        .map(|(c, expired)| format!("{c}={}", if *expired { "EXPIRED" } else { "live" }))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn table(f: &Frame<'_>) -> String {
    let mut s = String::new();
    let w = f.window;
    let _ = writeln!(
        s,
        "isthmus demo — ingress (us-west) → productpage → reviews   t = {:>4}s",
        f.elapsed.as_secs()
    );
    let _ = writeln!(s, "curl {}\n", f.url);
    let _ = writeln!(
        s,
        "last second: {} requests, {:.1}% ok, p50 {:.1}ms, p99 {:.1}ms",
        w.total,
        w.success_rate() * 100.0,
        ms(w.p50),
        ms(w.p99)
    );
    let _ = writeln!(
        s,
        "  {:<12} {:<7} {:>6} {:>7}",
        "CLUSTER", "VERSION", "REQS", "SHARE"
    );
    for r in &f.rows {
        let share = if w.ok == 0 {
            0.0
        } else {
            r.count as f64 / w.ok as f64
        };
        let _ = writeln!(
            s,
            "  {:<12} {:<7} {:>6} {:>6.1}% {}",
            r.cluster,
            r.version,
            r.count,
            share * 100.0,
            bar(share)
        );
    }
    if w.failed > 0 {
        let _ = writeln!(
            s,
            "  {:<12} {:<7} {:>6} {:?}",
            "FAILED", "", w.failed, w.failures
        );
    }
    let t = f.total;
    let _ = writeln!(
        s,
        "\nsince start: {} requests, {} failed ({:.2}% ok), p50 {:.1}ms, p99 {:.1}ms, max {:.1}ms",
        t.total,
        t.failed,
        t.success_rate() * 100.0,
        ms(t.p50),
        ms(t.p99),
        ms(t.max)
    );
    let _ = writeln!(s, "leases seen by us-west: {}", lease_text(f.leases));
    if !f.events.is_empty() {
        let _ = writeln!(s, "\nevents:");
        for e in f.events {
            let _ = writeln!(s, "  {:>5.1}s  {}", e.at.as_secs_f64(), e.text);
        }
    }
    s
}

pub fn line(f: &Frame<'_>) -> String {
    let w = f.window;
    let landings = f
        .rows
        .iter()
        .map(|r| format!("{}/{}={}", r.cluster, r.version, r.count))
        .collect::<Vec<_>>()
        .join(" ");
    let mut s = format!(
        "t={:>3}s reqs={} ok={:.1}% p50={:.1}ms p99={:.1}ms [{}] leases: {}",
        f.elapsed.as_secs(),
        w.total,
        w.success_rate() * 100.0,
        ms(w.p50),
        ms(w.p99),
        landings,
        lease_text(f.leases)
    );
    if w.failed > 0 {
        let _ = write!(s, " failed={}", w.failed);
    }
    for e in f.events.iter().skip(f.printed_events) {
        let _ = write!(s, "\n  event at {:.1}s: {}", e.at.as_secs_f64(), e.text);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_line_show_landings_leases_and_events() {
        let window = Summary {
            total: 30,
            ok: 30,
            ..Summary::default()
        };
        let total = Summary {
            total: 300,
            ok: 299,
            failed: 1,
            ..Summary::default()
        };
        let leases = vec![
            ("us-east".to_string(), true),
            ("eu-central".to_string(), false),
        ];
        let events = vec![Event {
            at: Duration::from_millis(10_500),
            text: "killed us-east".into(),
        }];
        let f = Frame {
            elapsed: Duration::from_secs(11),
            rows: vec![Row {
                cluster: "eu-central".into(),
                version: "v1".into(),
                count: 15,
            }],
            window: &window,
            total: &total,
            leases: &leases,
            events: &events,
            printed_events: 0,
            url: "http://127.12.0.3:8080/",
        };
        let t = table(&f);
        assert!(t.contains("eu-central   v1"), "{t}");
        assert!(t.contains("50.0%"), "{t}");
        assert!(t.contains("us-east=EXPIRED eu-central=live"), "{t}");
        assert!(t.contains("killed us-east"), "{t}");
        let l = line(&f);
        assert!(l.contains("[eu-central/v1=15]"), "{l}");
        assert!(l.contains("event at 10.5s: killed us-east"), "{l}");
        let again = line(&Frame {
            printed_events: 1,
            ..f
        });
        assert!(!again.contains("killed"), "{again}");
    }
}
