//! The live part of activation and rollback: swap `current`, reload the application server,
//! prove the new build is what every worker serves — and, when that fails, swap back.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use common::report::Outcome;
use common::BuildNumber;

use crate::config::InstallerConfig;
use crate::health;
use crate::procs;
use crate::run::{Phase, Run};

/// Reloads the application server and tells which build it serves.
pub trait AppServer {
    fn reload(&self) -> anyhow::Result<()>;
    /// Waits until every worker serves `build`, or fails with what it saw at the deadline.
    fn wait_serving(
        &self,
        build: BuildNumber,
        swapped_at: SystemTime,
        timeout: Duration,
    ) -> anyhow::Result<()>;
}

/// The real one: the configured reload, HTTP checks and uWSGI's stats.
pub struct Uwsgi<'a> {
    pub config: &'a InstallerConfig,
    /// Worker pids just before the last reload: each must be replaced.
    before: std::cell::RefCell<Vec<u64>>,
}

impl<'a> Uwsgi<'a> {
    pub fn new(config: &'a InstallerConfig) -> Self {
        Self {
            config,
            before: Default::default(),
        }
    }
}

impl AppServer for Uwsgi<'_> {
    fn reload(&self) -> anyhow::Result<()> {
        if let Some(stats) = &self.config.health.stats_url {
            let pids = health::workers(stats, Duration::from_secs(5))
                .map(|ws| ws.iter().map(|w| w.pid).collect())
                .unwrap_or_default();
            *self.before.borrow_mut() = pids;
        }
        if let Some(fifo) = &self.config.reload_fifo {
            return chain_reload_via_fifo(fifo);
        }
        match &self.config.reload_file {
            Some(file) => bump_mtime(file),
            None => procs::run(&self.config.reload, &self.config.root, &[]),
        }
    }

    fn wait_serving(
        &self,
        build: BuildNumber,
        swapped_at: SystemTime,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let h = &self.config.health;
        let site = health::Site::new(&h.url, h.host.as_deref(), h.ca_file.as_deref())
            .context("the health check cannot start")?;
        let deadline = Instant::now() + timeout;
        let request = Duration::from_secs(5).min(timeout);
        let want = build.digits();
        let swapped = swapped_at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut last;
        // 1. The page answers with the new build.
        loop {
            common::fault::point("health:poll");
            match site.get(request) {
                Ok(a)
                    if a.status == 200
                        && health::served_build(&a.body).as_deref() == Some(want.as_str()) =>
                {
                    break
                }
                Ok(a) => {
                    last = match health::served_build(&a.body) {
                        Some(b) => format!("{}, build {b}", a.describe()),
                        None => format!("{}, with no `Build number = NNNNNN`", a.describe()),
                    }
                }
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` did not serve build {want} within {}s (last: {last})",
                    h.url,
                    timeout.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // 2. Every worker was replaced since the swap (see `is_fresh`): a chain reload replaces
        //    them one by one, and until the last one is replaced some requests still get the
        //    old build.
        if let Some(stats) = &h.stats_url {
            let before = self.before.borrow().clone();
            let mut stall = Stall::new(Instant::now());
            loop {
                common::fault::point("health:poll");
                match health::workers(stats, request) {
                    Ok(ws) => {
                        let fresh = ws.iter().filter(|w| is_fresh(w, swapped, &before)).count();
                        if !ws.is_empty() && fresh == ws.len() {
                            break;
                        }
                        if stall.observe(fresh, Instant::now()) {
                            // uWSGI ignores a chain reload asked for while one is still running
                            // ("chain reload already running"), e.g. a restore right after a
                            // failed switch: once that chain ends with workers older than the
                            // swap, ask again.
                            eprintln!("    {fresh} of {} workers replaced and no progress for {}s: asking uWSGI again", ws.len(), STALL.as_secs());
                            self.rerequest()?;
                        }
                        last = format!("{fresh} of {} workers respawned since the swap", ws.len())
                    }
                    Err(e) => last = format!("{e:#}"),
                }
                if Instant::now() >= deadline {
                    bail!(
                        "not every uWSGI worker was replaced within {}s ({last})",
                        timeout.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // 3. Then every request sees it.
        for i in 0..h.confirm_requests {
            common::fault::point("health:poll");
            let a = site.get(request)?;
            let seen = health::served_build(&a.body);
            if a.status != 200 || seen.as_deref() != Some(want.as_str()) {
                bail!(
                    "request {} of {} after the reload got {} with build {}, not {want}",
                    i + 1,
                    h.confirm_requests,
                    a.describe(),
                    seen.unwrap_or_else(|| "none".into())
                );
            }
        }
        Ok(())
    }
}

/// Whether a worker started after the swap, so it loaded the build `current` names now.
///
/// `last_spawn` has whole seconds: a worker that an earlier reload spawned in the swap's own
/// second (an activation followed at once by a rollback) would pass for new and still serve
/// the old build. So a worker must also not be one of the processes running when the reload
/// was asked for (`before`, empty when the stats could not be read then); pid 0 is a slot
/// whose worker is being respawned.
fn is_fresh(w: &health::Worker, swapped: i64, before: &[u64]) -> bool {
    w.pid != 0 && w.last_spawn >= swapped && !before.contains(&w.pid)
}

/// How long the worker count may stand still before a chain reload is asked for again: well
/// beyond one worker's respawn (about 1 s for the app), short against the health timeout.
const STALL: Duration = Duration::from_secs(5);

/// Watches a chain reload's progress: the number of workers respawned since the swap.
struct Stall {
    fresh: usize,
    since: Instant,
}

impl Stall {
    fn new(now: Instant) -> Self {
        Self {
            fresh: 0,
            since: now,
        }
    }

    /// Takes a new count; true when it has not moved for `STALL` (then the clock restarts, so
    /// a re-request is made at most once per period).
    fn observe(&mut self, fresh: usize, now: Instant) -> bool {
        if fresh != self.fresh {
            self.fresh = fresh;
            self.since = now;
            return false;
        }
        if now.duration_since(self.since) >= STALL {
            self.since = now;
            return true;
        }
        false
    }
}

impl Uwsgi<'_> {
    /// Asks again for the reload that `reload` asked for, without taking a new pid snapshot.
    /// Only the chain-reload triggers can be re-asked; a reload command already restarted all.
    fn rerequest(&self) -> anyhow::Result<()> {
        if let Some(fifo) = &self.config.reload_fifo {
            return chain_reload_via_fifo(fifo);
        }
        if let Some(file) = &self.config.reload_file {
            return bump_mtime(file);
        }
        Ok(())
    }
}

/// Asks uWSGI's master for a chain reload through its FIFO. When no master reads it (no FIFO,
/// or nobody on the other end) uWSGI is not running: there is nothing to reload, it will load
/// `current` when it starts, and the health check decides whether the site serves.
pub fn chain_reload_via_fifo(fifo: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(fifo);
    let mut f = match opened {
        Ok(f) => f,
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(rustix::io::Errno::NXIO.raw_os_error()) =>
        {
            eprintln!("    uWSGI is not running (no reader on `{}`): it will serve the new release when it starts", fifo.display());
            return Ok(());
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot open uWSGI's master FIFO `{}`", fifo.display()))
        }
    };
    f.write_all(b"c")
        .with_context(|| format!("cannot write to `{}`", fifo.display()))?;
    eprintln!(
        "    asked uWSGI for a chain reload through `{}`",
        fifo.display()
    );
    Ok(())
}

/// Moves a file's mtime forward by at least one second (creating it if needed), so a watcher
/// that compares whole seconds always sees a change.
pub fn bump_mtime(file: &std::path::Path) -> anyhow::Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .with_context(|| format!("cannot open `{}`", file.display()))?;
    let old = f
        .metadata()
        .and_then(|m| m.modified())
        .unwrap_or(UNIX_EPOCH);
    let now = SystemTime::now();
    let next = std::cmp::max(now, old + Duration::from_secs(1));
    f.set_modified(next)
        .with_context(|| format!("cannot touch `{}`", file.display()))?;
    eprintln!("    touched `{}`", file.display());
    Ok(())
}

/// How a switch ended.
pub enum Switched {
    Live,
    /// Failed and the previous build serves again.
    RolledBack(anyhow::Error),
    /// Failed and could not be restored.
    Stuck(anyhow::Error),
}

/// Swaps to `build`, reloads and checks; on failure swaps back to `previous` (if any), reloads
/// and checks that it serves again. Each phase is timed, journalled and offered to the crash
/// tests by `run`.
pub fn switch(
    run: &mut Run<'_>,
    app: &dyn AppServer,
    build: BuildNumber,
    previous: Option<BuildNumber>,
) -> anyhow::Result<Switched> {
    let layout = run.layout.clone();
    let timeout = Duration::from_secs(run.config.health.timeout_secs);
    let t = run.begin(Phase::Swap);
    let swapped_at = if layout.current_build()? == Some(build) {
        // A run killed after its swap: keep the link and its time, so workers respawned since
        // then count as serving this build (uWSGI may still be busy with that chain reload).
        std::fs::symlink_metadata(layout.current())
            .and_then(|m| m.modified())
            .with_context(|| format!("cannot stat `{}`", layout.current().display()))?
    } else {
        let at = SystemTime::now();
        layout.set_current(build)?;
        at
    };
    // Two builds of one commit share `static/<VERSION_HASH>`: it follows `current`, so the
    // pages being served always find their own build's files (and a restore takes it back).
    take_static_link(run, build);
    eprintln!(
        "    `current` -> releases/{build:#} ({:.2}s)",
        t.elapsed().as_secs_f64()
    );
    run.end(Phase::Swap, build, t, true);

    let t = run.begin(Phase::Reload);
    let failure = match app.reload() {
        Ok(()) => {
            eprintln!("    {:.2}s", t.elapsed().as_secs_f64());
            run.end(Phase::Reload, build, t, true);
            let t = run.begin(Phase::Health);
            match app.wait_serving(build, swapped_at, timeout) {
                Ok(()) => {
                    eprintln!(
                        "    every worker serves {build:#} ({:.2}s)",
                        t.elapsed().as_secs_f64()
                    );
                    run.end(Phase::Health, build, t, true);
                    return Ok(Switched::Live);
                }
                Err(e) => {
                    run.end(Phase::Health, build, t, false);
                    e.context(format!("health check of {build:#} failed"))
                }
            }
        }
        Err(e) => {
            run.end(Phase::Reload, build, t, false);
            e.context("reload failed")
        }
    };
    eprintln!(
        "error: {}",
        common::untrusted::message(&format!("{failure:#}"))
    );
    let Some(previous) = previous else {
        return Ok(Switched::Stuck(failure.context(format!(
            "there is no previous release to return to: `current` points at {build:#}; fix the application server, then run `installer activate` again"
        ))));
    };
    eprintln!("    restoring {previous:#}");
    let t = run.begin(Phase::Restore);
    let restore = (|| -> anyhow::Result<()> {
        let at = SystemTime::now();
        layout.set_current(previous)?;
        take_static_link(run, previous);
        app.reload().context("reload after swapping back failed")?;
        app.wait_serving(previous, at, timeout)
            .with_context(|| format!("{previous:#} does not serve again after swapping back"))
    })();
    run.end(Phase::Restore, previous, t, restore.is_ok());
    Ok(match restore {
        Ok(()) => Switched::RolledBack(failure),
        Err(e) => Switched::Stuck(failure.context(format!(
            "{e:#}; `current` points at {previous:#}: check the application server (uWSGI) and its log, then run `installer status`"
        ))),
    })
}

/// Points `build`'s static link at it even when another release has it; a failure is a warning
/// (the release is already live, only a page of another build of the same commit may lack a
/// file).
fn take_static_link(run: &mut Run<'_>, build: BuildNumber) {
    if let Err(e) = crate::release::link_static(
        &run.layout,
        run.config,
        build,
        crate::release::StaticLink::TakeOver,
    ) {
        let w = format!("cannot point the static link at {build:#}: {e:#}");
        eprintln!("warning: {w}");
        run.report.warnings.push(w);
    }
}

/// Journals how a switch ended and turns it into the command's outcome. `was_live` is what
/// `current` pointed at before the command (recorded as the previous build).
pub fn conclude(
    run: &mut Run<'_>,
    build: BuildNumber,
    was_live: Option<BuildNumber>,
    switched: Switched,
) -> anyhow::Result<Outcome> {
    let (outcome, error) = match switched {
        Switched::Live => {
            run.live(build, was_live)?;
            eprintln!("{build:#} is live");
            (Outcome::Success, None)
        }
        Switched::RolledBack(e) => {
            eprintln!(
                "rolled back: {} serves again",
                run.layout
                    .current_build()
                    .ok()
                    .flatten()
                    .map(|b| b.tag())
                    .unwrap_or_default()
            );
            (Outcome::RolledBack, Some(e))
        }
        Switched::Stuck(e) => {
            eprintln!("error: {}", common::untrusted::message(&format!("{e:#}")));
            (Outcome::OperatorNeeded, Some(e))
        }
    };
    let detail = error.map(|e| format!("{e:#}"));
    run.record_finished(build, was_live, outcome, detail.clone());
    if let Some(d) = detail {
        run.report.error = Some(common::untrusted::message(&d));
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_reload_is_asked_again_only_when_progress_stands_still() {
        let t0 = Instant::now();
        let mut stall = Stall::new(t0);
        // Workers being replaced one by one: progress, never a re-request.
        assert!(!stall.observe(1, t0 + Duration::from_secs(1)));
        assert!(!stall.observe(1, t0 + Duration::from_secs(4)));
        assert!(!stall.observe(2, t0 + Duration::from_secs(5)));
        // Stuck at 2 of 3 for the whole period: ask once...
        assert!(!stall.observe(2, t0 + Duration::from_secs(9)));
        assert!(stall.observe(2, t0 + Duration::from_secs(10)));
        // ...and not again until another full period passes without progress.
        assert!(!stall.observe(2, t0 + Duration::from_secs(11)));
        assert!(stall.observe(2, t0 + Duration::from_secs(15)));
    }

    #[test]
    fn a_worker_spawned_in_the_swaps_second_but_before_the_reload_is_not_fresh() {
        let w = |pid, last_spawn| health::Worker {
            pid,
            last_spawn,
            accepting: true,
        };
        let swapped = 1_000;
        let before = [41, 42];
        // Spawned by the previous reload in the same second as this swap: still old.
        assert!(!is_fresh(&w(42, 1_000), swapped, &before));
        // Spawned before the swap: old, whatever its pid.
        assert!(!is_fresh(&w(43, 999), swapped, &before));
        // A new process since the reload was asked for, in or after the swap's second: fresh.
        assert!(is_fresh(&w(43, 1_000), swapped, &before));
        assert!(is_fresh(&w(44, 1_001), swapped, &before));
        // A slot being respawned has no process yet.
        assert!(!is_fresh(&w(0, 1_001), swapped, &before));
        // Without a snapshot (stats unreadable at reload time) only the time can tell.
        assert!(is_fresh(&w(42, 1_000), swapped, &[]));
    }

    #[test]
    fn nothing_respawned_at_all_also_counts_as_a_stall() {
        let t0 = Instant::now();
        let mut stall = Stall::new(t0);
        assert!(!stall.observe(0, t0 + Duration::from_secs(2)));
        assert!(stall.observe(0, t0 + STALL));
    }
}
