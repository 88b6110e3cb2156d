//! Fault injection for the crash tests: `fault::point("name")` kills this process with SIGKILL
//! when the environment asks for that point, and is an empty inline function otherwise.
//!
//! Only builds with the cargo feature `fault-injection` (the test builds, through the
//! installer's feature of the same name) contain the real hook; release builds cannot be made
//! to kill themselves by an environment variable. With the feature, `BINARYCRATE_FAULT=name`
//! kills at the first hit of `name`, `BINARYCRATE_FAULT=name@N` at the Nth. Before dying the
//! process says so on stderr (`fault injection: SIGKILL at name (hit N)`), so a test can tell
//! the kill it asked for from a crash.
//!
//! Only this process is killed, like `kill -9 <pid>`: commands it started (pip, migrate) live
//! on as orphans. They keep the deployment lock (see `installer`'s `lock` module), so a re-run
//! waits for them instead of racing them.

/// The environment variable that chooses the point.
pub const ENV: &str = "BINARYCRATE_FAULT";

/// Kills the process when `name` is the chosen point and this is the chosen hit.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Kills the process when `name` is the chosen point and this is the chosen hit.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static CHOSEN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let chosen = CHOSEN.get_or_init(|| std::env::var(ENV).ok().and_then(|v| parse(&v)));
    let Some((point, nth)) = chosen else {
        return;
    };
    if point != name {
        return;
    }
    let hit = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if hit == *nth {
        eprintln!("fault injection: SIGKILL at {name} (hit {hit})");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; nothing after this line runs.
        loop {
            std::thread::park();
        }
    }
}

/// `name` or `name@N` (N ≥ 1).
#[cfg(any(feature = "fault-injection", test))]
fn parse(value: &str) -> Option<(String, u64)> {
    let value = value.trim();
    let (name, nth) = match value.rsplit_once('@') {
        Some((name, n)) => (name, n.parse::<u64>().ok().filter(|n| *n >= 1)?),
        None => (value, 1),
    };
    (!name.is_empty()).then(|| (name.to_owned(), nth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_a_hit_count() {
        assert_eq!(
            parse("activate:after-swap"),
            Some(("activate:after-swap".into(), 1))
        );
        assert_eq!(
            parse("unpack:entry@200"),
            Some(("unpack:entry".into(), 200))
        );
        assert_eq!(parse("x@0"), None);
        assert_eq!(parse("x@many"), None);
        assert_eq!(parse(""), None);
    }

    #[test]
    fn an_unchosen_point_returns() {
        // The test process has no BINARYCRATE_FAULT naming this point, feature or not.
        point("tests:never-chosen");
    }
}
