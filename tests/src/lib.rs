//! Test support.
//!
//! Code shared by the end-to-end tests in `tests/tests/`: real servers started on loopback for
//! the duration of a test, and fixtures.
//!
//! - [`bins`]: paths of the `builder` and `installer` binaries, built on first use.
//! - [`example`]: the example app (a small BinaryCrate) as git repositories; safe git; snapshots.
//! - [`moto`]: a moto server (S3/SSM/EC2 stand-in) from the test virtualenv that
//!   `scripts/python-env` creates, with dummy credentials and a loopback endpoint.
//! - [`nginx`]: a real nginx (Debian's package) on loopback in front of that uWSGI, from the
//!   recommended site configuration (`fixtures/server/nginx-site.conf`).
//! - [`process`]: a server process under a watchdog that stops it even when the test dies.
//! - [`published`]: builds 000001–000004 of the example, published once to one file store, and
//!   server roots (config, ports, copies) that install them under a real uWSGI.
//! - [`site`]: a loopback page saying which build `current` names, over HTTP or HTTPS (a
//!   private CA's certificate), for health checks that need no uWSGI.
//! - [`ssm`]: the SSM Run Command stand-in (moto with `AWS-RunShellScript` really run on
//!   "instances" that are directories and environments here; `fixtures/ssm/launcher.py`).
//! - [`uwsgi`]: a real uWSGI (pyuwsgi) serving `<root>/current` from the recommended
//!   configuration (`fixtures/server/`), and releases laid out by hand without the installer.

pub mod bins;
pub mod example;
pub mod moto;
pub mod nginx;
pub mod process;
pub mod published;
pub mod site;
pub mod ssm;
pub mod uwsgi;

/// Prints a measured figure straight to stderr, past the test harness's output capture, so the
/// summary lines (`crash-matrix: …`, `bad-input: …`) show in `scripts/test`'s log too.
pub fn show(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Whether a test can run here; `missing` names the first prerequisite that is not installed.
/// Outside CI a missing one skips the test with a printed reason; under CI it is a failure.
pub fn ready(missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) => {
            assert!(std::env::var_os("CI").is_none(), "{why}");
            eprintln!("skipping: {why}");
            false
        }
    }
}

/// A loopback port for a server that is started later and must be told its port in advance
/// (uWSGI's, named in `installer.toml` before it runs). Taken below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768 and up by default): a port from that range, even one
/// just seen free, can be handed to any outgoing connection before the server binds it, and the
/// load tests open thousands (seen: uWSGI failing with "Address already in use"). Below it the
/// kernel assigns nothing by itself; ports handed out here are never handed out twice by this
/// process, and each is checked free when chosen.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, span) = if ephemeral_low >= 12_000 {
        (ephemeral_low - 10_000, 10_000)
    } else {
        // An unusual range: fall back to what the kernel picks.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        return port;
    };
    // Different test processes start at different places.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + start.wrapping_add(n) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{}", low + span)
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports: Vec<u16> = (0..50).map(|_| super::free_port()).collect();
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        for port in ports {
            if low >= 12_000 {
                assert!(
                    u32::from(port) < low,
                    "{port} is in the ephemeral range from {low}"
                );
            }
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }
}
