//! `builder deploy` as a rollout: the instances in a stable order, a canary first, a bake that
//! checks the canaries again, then waves of `--max-concurrency` — and when the rollout stops
//! (a canary, the bake, the error budget, Ctrl-C), every instance that switched in this deploy
//! is rolled back to the build it had, so the fleet ends on one build.
//!
//! Each stage is one command aimed at its instances by id, watched to the end before the next
//! starts: SSM's own rate control would start the next instances while the first are still
//! proving themselves, and stop a rollout without undoing what already switched.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use common::error::BadInput;
use common::report::{ExitCode, Outcome};
use common::BuildNumber;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::local::LocalTransport;
use super::run::{drive_with, installer_line};
use super::ssm::SsmTransport;
use super::summary::{format_duration, plural, FleetSummary, Installed, Instance, Kind};
use super::watch::{InstanceRun, Watched};
use super::{
    comment, Action, InstallerInvocation, Rate, SendRequest, Status, Targets, Transport,
    TransportKind,
};

/// A deploy, checked, with how to roll it out.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub app: String,
    /// `Action::Deploy`.
    pub action: Action,
    pub invocation: InstallerInvocation,
    /// The deploy's request for the whole fleet: each stage gets a copy aimed at its instances.
    pub request: SendRequest,
    pub transport: TransportKind,
    pub ssm_endpoint: Option<String>,
    /// How many instances go first, alone.
    pub canary: Option<Rate>,
    /// How long the canaries are watched before the rest (zero: not at all).
    pub bake: Duration,
    /// How often the bake checks them.
    pub bake_every: Duration,
    /// Instances that go first, in this order; the rest follow sorted by id.
    pub order: Vec<String>,
    pub rollback_on_failure: bool,
    /// Ask before rolling back after Ctrl-C (only on a terminal).
    pub ask_on_interrupt: bool,
    pub verbose: bool,
    pub json: bool,
}

/// How often a bake of `bake` checks the canaries: five times, at most once a second and at
/// least once a minute.
pub fn bake_interval(bake: Duration) -> Duration {
    (bake / 5).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// `N` of `total`, or `N%` of it rounded down — at least one (a canary, a wave).
fn count(rate: Rate, total: usize) -> usize {
    match rate {
        Rate::Count(n) => n as usize,
        Rate::Percent(p) => total * p as usize / 100,
    }
    .max(1)
}

/// How many failures `--max-errors` tolerates among `total`: SSM's reading (a percentage
/// rounds down; the rollout stops once more than that many failed).
fn budget(rate: Rate, total: usize) -> usize {
    match rate {
        Rate::Count(n) => n as usize,
        Rate::Percent(p) => total * p as usize / 100,
    }
}

/// The instances sorted by id, those named by `--order` first in that order. Naming one that
/// is not among the targets is bad input.
pub fn ordered(mut ids: Vec<String>, order: &[String]) -> Result<Vec<String>, BadInput> {
    ids.sort();
    ids.dedup();
    let mut out: Vec<String> = Vec::new();
    for o in order {
        if !ids.contains(o) {
            return Err(BadInput(format!(
                "`--order` names `{}`, which is not among the targets ({} instance{}): name only targeted instances",
                o.escape_debug(),
                ids.len(),
                plural(ids.len())
            )));
        }
        if !out.contains(o) {
            out.push(o.clone());
        }
    }
    out.extend(ids.into_iter().filter(|i| !order.contains(i)));
    Ok(out)
}

/// One stage: its name (`canary`, `wave 2`) and the positions of its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    pub canary: bool,
    pub members: Vec<usize>,
}

/// The stages for `total` instances.
pub fn stages(total: usize, canary: Option<Rate>, wave: Rate) -> Vec<Stage> {
    let canaries = canary.map_or(0, |c| count(c, total).min(total));
    let mut out = Vec::new();
    if canaries > 0 {
        out.push(Stage {
            name: "canary".into(),
            canary: true,
            members: (0..canaries).collect(),
        });
    }
    let rest: Vec<usize> = (canaries..total).collect();
    for (n, chunk) in rest.chunks(count(wave, total)).enumerate() {
        out.push(Stage {
            name: format!("wave {}", n + 1),
            canary: false,
            members: chunk.to_vec(),
        });
    }
    out
}

/// An instance rolled back because the rollout stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct RolledBack {
    pub instance: String,
    pub to: BuildNumber,
    pub ok: bool,
    pub result: String,
}

/// What the rollout did.
#[derive(Debug, Clone)]
pub struct RolloutResult {
    pub build: BuildNumber,
    /// The deploy's runs, in rollout order (instances never started included).
    pub summary: FleetSummary,
    pub stages: Vec<Stage>,
    pub bake: Duration,
    pub bake_checks: u32,
    /// Why the rollout stopped early.
    pub stopped: Option<String>,
    pub rolled_back: Vec<RolledBack>,
    /// Instances that could not be brought back, and why.
    pub not_restored: Vec<(String, String)>,
}

/// Runs the rollout and shows its result; the exit code.
pub fn execute(rollout: &Rollout) -> anyhow::Result<ExitCode> {
    let result = common::runtime::shared()?.block_on(async {
        match rollout.transport {
            TransportKind::Ssm => {
                let t = SsmTransport::connect(rollout.ssm_endpoint.as_deref()).await?;
                go(&t, rollout).await
            }
            TransportKind::Local => go(&LocalTransport::new(), rollout).await,
        }
    })?;
    result.show(rollout.verbose, rollout.json)?;
    Ok(result.exit_code())
}

/// Whether the installer ran at all there (an invocation cancelled or cut off before it started
/// has SSM's response code -1 and no output).
fn started(i: &Instance<Installed>) -> bool {
    i.result.report.is_some()
        || i.exit_code.is_some_and(|c| c != -1)
        || !i.stdout.is_empty()
        || !i.stderr.is_empty()
}

/// Where a stage's command goes: its instances, or (local transport) this machine.
fn aim(request: &SendRequest, names: &[&str]) -> Option<Targets> {
    request
        .targets
        .as_ref()
        .map(|_| Targets::Instances(names.iter().map(|n| (*n).to_owned()).collect()))
}

pub(super) async fn go<T: Transport>(t: &T, r: &Rollout) -> anyhow::Result<RolloutResult> {
    let build = r.action.build().expect("a deploy names its build");
    let names: Vec<String> = match &r.request.targets {
        None => {
            if !r.order.is_empty() {
                return Err(BadInput(
                    "`--order` is for SSM targets; the local transport has one instance".into(),
                )
                .into());
            }
            vec![super::LOCAL_INSTANCE.to_owned()]
        }
        Some(Targets::Instances(ids)) => ordered(ids.clone(), &r.order)?,
        Some(Targets::Tags(tags)) => ordered(t.instances(tags).await?, &r.order)?,
    };
    let total = names.len();
    let stages = stages(total, r.canary, r.request.max_concurrency);
    let allowed = budget(r.request.max_errors, total);
    if total > 0 {
        let canaries = stages
            .iter()
            .filter(|s| s.canary)
            .map(|s| s.members.len())
            .sum::<usize>();
        let waves = stages.len() - usize::from(canaries > 0);
        eprintln!(
            "{}: {total} instance{} in this order: {}",
            r.request.comment,
            plural(total),
            names.join(", ")
        );
        eprintln!(
            "  {}{waves} wave{} of up to {}; stops after more than {allowed} failure{}{}",
            if canaries > 0 {
                format!(
                    "canary {canaries}{}, then ",
                    if r.bake.is_zero() {
                        String::new()
                    } else {
                        format!(" baked {}", format_duration(Some(r.bake)))
                    }
                )
            } else {
                String::new()
            },
            plural(waves),
            count(r.request.max_concurrency, total),
            plural(allowed),
            if r.rollback_on_failure {
                "; what switched is rolled back if it stops"
            } else {
                "; --no-rollback-on-failure: what switched stays switched if it stops"
            }
        );
        eprintln!("  {}", r.request.line);
    }

    let (ctrl_c, mut rx) = super::run::interrupts();
    let mut runs: Vec<Option<InstanceRun>> = vec![None; total];
    let mut command_ids = Vec::new();
    let mut stopped: Option<String> = None;
    let (mut interrupted, mut gave_up) = (false, None);
    let mut failures = 0;
    let mut bake_checks = 0;
    for stage in &stages {
        if stopped.is_some() {
            break;
        }
        let members: Vec<&str> = stage.members.iter().map(|&i| names[i].as_str()).collect();
        let mut request = r.request.clone();
        request.targets = aim(&r.request, &members);
        request.max_concurrency = Rate::Count(members.len() as u32);
        // A canary tolerates no failure; a wave what is left of the budget.
        request.max_errors = Rate::Count(if stage.canary {
            0
        } else {
            allowed.saturating_sub(failures) as u32
        });
        eprintln!("\n{}: {}", stage.name, members.join(", "));
        let sent = drive_with(t, r.transport, &request, &mut rx, true).await?;
        command_ids.push(sent.command_id);
        let mut failed_here = Vec::new();
        for run in sent.watched.instances {
            let Some(pos) = names.iter().position(|n| *n == run.state.instance) else {
                continue;
            };
            let ok = run.state.status == Status::Success
                && run.output.exit_code.or(run.state.exit_code).unwrap_or(0) == 0;
            if !ok {
                failed_here.push(names[pos].clone());
            }
            runs[pos] = Some(run);
        }
        for &pos in &stage.members {
            if runs[pos].is_none() {
                failed_here.push(names[pos].clone());
            }
        }
        failures += failed_here.len();
        if sent.watched.interrupted {
            interrupted = true;
            stopped = Some(format!("interrupted (Ctrl-C) during the {}", stage.name));
        } else if let Some(g) = sent.watched.gave_up {
            stopped = Some(format!("the {} did not finish: {g}", stage.name));
            gave_up = Some(g);
        } else if stage.canary && !failed_here.is_empty() {
            stopped = Some(format!(
                "the canary {} did not succeed",
                failed_here.join(", ")
            ));
        } else if failures > allowed {
            stopped = Some(format!(
                "{failures} instance{} failed by the end of the {} ({}), more than --max-errors {}",
                plural(failures),
                stage.name,
                failed_here.join(", "),
                r.request.max_errors
            ));
        }
        if stopped.is_none() && stage.canary && !r.bake.is_zero() {
            let (end, checks) = bake(t, r, build, &members, &mut rx).await?;
            bake_checks = checks;
            match end {
                BakeEnd::Healthy => {}
                BakeEnd::Failed(why) => stopped = Some(why),
                BakeEnd::Interrupted => {
                    interrupted = true;
                    stopped = Some("interrupted (Ctrl-C) during the bake".into());
                }
            }
        }
    }
    let why = stopped
        .as_deref()
        .map(|s| format!("not started: the rollout stopped ({s})"))
        .unwrap_or_default();
    let runs: Vec<InstanceRun> = runs
        .into_iter()
        .zip(&names)
        .map(|(run, name)| run.unwrap_or_else(|| InstanceRun::not_started(name, &why)))
        .collect();
    let described = super::run::described(&r.request);
    let summary = FleetSummary::new(
        r.action.clone(),
        t.name(),
        command_ids.join(", "),
        described,
        Watched {
            instances: runs,
            interrupted,
            gave_up,
        },
    );

    // What switched to the build in this deploy, and what cannot be brought back.
    let mut switched: Vec<(String, BuildNumber)> = Vec::new();
    let mut not_restored: Vec<(String, String)> = Vec::new();
    for i in &summary.instances {
        match &i.result.report {
            Some(rep)
                if rep.outcome == Outcome::Success
                    && rep.build == Some(build)
                    && rep.previous_build != Some(build) =>
            {
                match rep.previous_build {
                    Some(p) => switched.push((i.instance.clone(), p)),
                    None => not_restored.push((
                        i.instance.clone(),
                        format!("it had no build before {build:#} to return to"),
                    )),
                }
            }
            Some(rep) if rep.outcome == Outcome::OperatorNeeded => not_restored.push((
                i.instance.clone(),
                format!(
                    "its installer needs an operator: {}",
                    rep.error.as_deref().unwrap_or("see its report")
                ),
            )),
            Some(_) => {}
            None if started(i) => not_restored.push((
                i.instance.clone(),
                format!(
                    "it ended {} without an installer report, so its live build is unknown: check it with `builder status`",
                    i.status
                ),
            )),
            None => {}
        }
    }
    let mut rolled_back = Vec::new();
    if stopped.is_some() && !switched.is_empty() {
        let go_back = if interrupted && r.ask_on_interrupt {
            ask(&switched, build)
        } else {
            r.rollback_on_failure
        };
        if go_back {
            rolled_back = roll_back(t, r, &switched, &mut rx).await?;
            for rb in rolled_back.iter().filter(|rb| !rb.ok) {
                not_restored.push((
                    rb.instance.clone(),
                    format!("its rollback to {:#} failed: {}", rb.to, rb.result),
                ));
            }
        } else {
            for (name, prev) in &switched {
                not_restored.push((
                    name.clone(),
                    format!(
                        "left on {build:#} (no rollback asked); `builder rollback --targets {name} --to {prev:#}` returns it"
                    ),
                ));
            }
        }
    }
    ctrl_c.abort();
    Ok(RolloutResult {
        build,
        summary,
        stages,
        bake: r.bake,
        bake_checks,
        stopped,
        rolled_back,
        not_restored,
    })
}

/// Asks on the terminal whether to roll back what switched (after Ctrl-C).
fn ask(switched: &[(String, BuildNumber)], build: BuildNumber) -> bool {
    if !std::io::stdin().is_terminal() {
        return true;
    }
    eprint!(
        "\n{} instance{} switched to {build:#} before the interrupt ({}). Roll {} back to the build {} had? [Y/n] ",
        switched.len(),
        plural(switched.len()),
        switched
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if switched.len() == 1 { "it" } else { "them" },
        if switched.len() == 1 { "it" } else { "each" },
    );
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return true;
    }
    !matches!(answer.trim().to_ascii_lowercase().as_str(), "n" | "no")
}

enum BakeEnd {
    Healthy,
    Failed(String),
    Interrupted,
}

/// Checks the canaries every [`Rollout::bake_every`] until the bake is over: each must answer
/// `installer status --check` healthy on `build`. Returns how it ended and how many checks ran.
async fn bake<T: Transport>(
    t: &T,
    r: &Rollout,
    build: BuildNumber,
    canaries: &[&str],
    rx: &mut UnboundedReceiver<()>,
) -> anyhow::Result<(BakeEnd, u32)> {
    let check = Action::Check;
    let mut request = r.request.clone();
    request.line = installer_line(&r.invocation, &check)?;
    request.comment = comment(&r.app, &check);
    request.targets = aim(&r.request, canaries);
    request.max_concurrency = Rate::Count(canaries.len() as u32);
    request.max_errors = Rate::Percent(100);
    eprintln!(
        "bake: checking {} every {} for {}",
        canaries.join(", "),
        format_duration(Some(r.bake_every)),
        format_duration(Some(r.bake))
    );
    let start = Instant::now();
    let mut checks = 0;
    loop {
        let wait = r.bake_every.min(r.bake.saturating_sub(start.elapsed()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = rx.recv() => return Ok((BakeEnd::Interrupted, checks)),
        }
        let sent = drive_with(t, r.transport, &request, rx, false).await?;
        checks += 1;
        if sent.watched.interrupted {
            return Ok((BakeEnd::Interrupted, checks));
        }
        let at = format_duration(Some(start.elapsed()));
        for name in canaries {
            let run = sent
                .watched
                .instances
                .iter()
                .find(|i| i.state.instance == *name);
            let healthy = run.and_then(|run| {
                let installed = check.read(&run.output.stdout);
                let rep = installed.report?;
                (run.state.status == Status::Success
                    && rep.outcome == Outcome::Success
                    && rep.build == Some(build))
                .then_some(())
            });
            if healthy.is_none() {
                let said = run
                    .map(|run| {
                        let i = Instance::from_run(run.clone(), |out| check.read(out));
                        check.result_text(&i)
                    })
                    .unwrap_or_else(|| "no answer".into());
                return Ok((
                    BakeEnd::Failed(format!(
                        "the canary {name} failed its health check {at} into the bake (check {checks}): {said}"
                    )),
                    checks,
                ));
            }
        }
        eprintln!(
            "bake: check {checks} at {at}: {} healthy on {build:#}",
            canaries.join(", ")
        );
        if start.elapsed() >= r.bake {
            return Ok((BakeEnd::Healthy, checks));
        }
    }
}

/// `installer rollback --to` each switched instance's own previous build (one command per
/// build), every one attempted whatever the others do.
async fn roll_back<T: Transport>(
    t: &T,
    r: &Rollout,
    switched: &[(String, BuildNumber)],
    rx: &mut UnboundedReceiver<()>,
) -> anyhow::Result<Vec<RolledBack>> {
    let mut groups: BTreeMap<BuildNumber, Vec<&str>> = BTreeMap::new();
    for (name, prev) in switched {
        groups.entry(*prev).or_default().push(name);
    }
    let mut out = Vec::new();
    for (to, names) in groups {
        // The database as the stopped deploy left it: a migration the old code cannot run
        // against makes the installer refuse, and the instance is named as not restored.
        let action = Action::Rollback {
            to: Some(to),
            schema: super::SchemaPolicy::Warn,
        };
        let mut request = r.request.clone();
        request.line = installer_line(&r.invocation, &action)?;
        request.comment = comment(&r.app, &action);
        request.targets = aim(&r.request, &names);
        request.max_concurrency = Rate::Count(names.len() as u32);
        request.max_errors = Rate::Percent(100);
        eprintln!("\nrollback to {to:#}: {}", names.join(", "));
        let sent = drive_with(t, r.transport, &request, rx, true).await?;
        for name in names {
            let run = sent
                .watched
                .instances
                .iter()
                .find(|i| i.state.instance == name)
                .cloned()
                .unwrap_or_else(|| InstanceRun::not_started(name, "no answer to the rollback"));
            let i = Instance::from_run(run, |out| action.read(out));
            out.push(RolledBack {
                instance: name.to_owned(),
                to,
                ok: action.ok(&i) && i.result.live == Some(to),
                result: action.result_text(&i),
            });
        }
    }
    Ok(out)
}

impl RolloutResult {
    /// 0 when every instance is on the build; when the rollout stopped, 4 if an instance could
    /// not be brought back (named), 3 if what switched is back on its build, 1 if nothing had
    /// switched. A rollout that finished with failures its `--max-errors` tolerated exits as a
    /// fleet command does (the worst installer code).
    pub fn exit_code(&self) -> ExitCode {
        if self.stopped.is_none() {
            return self.summary.exit_code();
        }
        let rolled_back_itself = self.summary.instances.iter().any(|i| {
            i.result
                .report
                .as_ref()
                .is_some_and(|r| r.outcome == Outcome::RolledBack)
        });
        if !self.not_restored.is_empty() {
            ExitCode::OperatorNeeded
        } else if !self.rolled_back.is_empty() || rolled_back_itself {
            ExitCode::RolledBack
        } else {
            ExitCode::Failed
        }
    }

    /// Instances left on another build than the rest: none after a clean stop or a clean
    /// finish.
    pub fn mixed(&self) -> bool {
        if self.stopped.is_some() {
            !self.not_restored.is_empty()
        } else {
            !self.summary.failed().is_empty()
        }
    }

    /// What each instance's stage was (`canary`, `wave 2`), by position.
    fn stage_of(&self, pos: usize) -> &str {
        self.stages
            .iter()
            .find(|s| s.members.contains(&pos))
            .map_or("-", |s| s.name.as_str())
    }

    /// The rollout's own lines after the table: the stages, the bake, what was rolled back.
    pub fn epilogue(&self) -> String {
        let mut out = String::new();
        let names = |members: &[usize]| -> String {
            members
                .iter()
                .map(|&p| self.summary.instances[p].instance.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        for s in &self.stages {
            let reached = s.members.iter().any(|&p| {
                self.summary.instances[p]
                    .detail
                    .as_deref()
                    .is_none_or(|d| !d.starts_with("not started"))
            });
            out.push_str(&format!(
                "{}: {}{}\n",
                s.name,
                names(&s.members),
                if reached { "" } else { " (not started)" }
            ));
            if s.canary && !self.bake.is_zero() {
                out.push_str(&format!(
                    "bake: {} check{} over {}\n",
                    self.bake_checks,
                    plural(self.bake_checks as usize),
                    format_duration(Some(self.bake))
                ));
            }
        }
        if let Some(why) = &self.stopped {
            out.push_str(&format!("stopped: {why}\n"));
        }
        for rb in &self.rolled_back {
            out.push_str(&format!(
                "rolled back: {} to {:#}: {}\n",
                rb.instance,
                rb.to,
                if rb.ok { "done" } else { rb.result.as_str() }
            ));
        }
        for (name, why) in &self.not_restored {
            out.push_str(&format!("NOT RESTORED: {name}: {why}\n"));
        }
        out
    }

    pub fn closing_line(&self) -> String {
        let build = self.build;
        let total = self.summary.instances.len();
        let code = self.exit_code();
        let suffix = if code == ExitCode::Success {
            String::new()
        } else {
            format!(" — exit {}", code.code())
        };
        if total == 0 {
            return self.summary.closing_line();
        }
        match &self.stopped {
            None => format!(
                "deploy {build:#}: {}{suffix}",
                if self.summary.failed().is_empty() {
                    if total == 1 {
                        format!("{} succeeded", self.summary.instances[0].instance)
                    } else {
                        format!(
                            "all {total} instances on {build:#} ({} stage{})",
                            self.stages.len(),
                            plural(self.stages.len())
                        )
                    }
                } else {
                    let failed: Vec<&str> = self
                        .summary
                        .failed()
                        .iter()
                        .map(|i| i.instance.as_str())
                        .collect();
                    format!(
                        "finished within --max-errors; {} of {total} did not switch ({})",
                        failed.len(),
                        failed.join(", ")
                    )
                }
            ),
            Some(why) => {
                let mut text = format!("deploy {build:#} stopped: {why}");
                if !self.rolled_back.is_empty() {
                    let back: Vec<&str> = self
                        .rolled_back
                        .iter()
                        .filter(|rb| rb.ok)
                        .map(|rb| rb.instance.as_str())
                        .collect();
                    if !back.is_empty() {
                        text.push_str(&format!("; rolled back {}", back.join(", ")));
                    }
                }
                if self.not_restored.is_empty() {
                    text.push_str("; no instance is left on it");
                } else {
                    let names: Vec<&str> =
                        self.not_restored.iter().map(|(n, _)| n.as_str()).collect();
                    text.push_str(&format!("; NOT restored: {}", names.join(", ")));
                }
                text + &suffix
            }
        }
    }

    /// The table, the rollout's lines and the closing line; `--json` adds `rollout` and each
    /// instance's `stage`.
    pub fn show(&self, verbose: bool, json: bool) -> anyhow::Result<()> {
        let extend = |v: &mut serde_json::Value| {
            if let Some(list) = v["instances"].as_array_mut() {
                for (pos, i) in list.iter_mut().enumerate() {
                    i["stage"] = self.stage_of(pos).into();
                }
            }
            let stages: Vec<serde_json::Value> = self
                .stages
                .iter()
                .map(|s| {
                    json!({
                        "name": s.name,
                        "canary": s.canary,
                        "instances": s.members.iter().map(|&p| self.summary.instances[p].instance.clone()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            v["rollout"] = json!({
                "order": self.summary.instances.iter().map(|i| i.instance.clone()).collect::<Vec<_>>(),
                "stages": stages,
                "bake_ms": self.bake.as_millis() as u64,
                "bake_checks": self.bake_checks,
                "stopped": self.stopped,
                "rolled_back": self.rolled_back.iter().map(|rb| json!({
                    "instance": rb.instance, "to": rb.to, "ok": rb.ok, "result": rb.result,
                })).collect::<Vec<_>>(),
                "not_restored": self.not_restored.iter().map(|(n, why)| json!({"instance": n, "why": why})).collect::<Vec<_>>(),
                "mixed": self.mixed(),
            });
            v["exit_code"] = self.exit_code().code().into();
        };
        self.summary.show_as(
            verbose,
            json,
            extend,
            &self.epilogue(),
            &self.closing_line(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{CommandHandle, InvocationOutput, InvocationState, PollResult};
    use common::report::Report;
    use std::cell::RefCell;

    fn b(n: u32) -> BuildNumber {
        BuildNumber::parse(&format!("{n:06}")).unwrap()
    }

    /// How one scripted instance answers.
    #[derive(Clone)]
    struct Script {
        /// The build live before the deploy.
        live: Option<BuildNumber>,
        /// The activation's outcome.
        activate: Outcome,
        /// `status --check` answers unhealthy from this check on (1-based).
        unhealthy_from: Option<u32>,
        rollback_fails: bool,
    }

    fn good(live: u32) -> Script {
        Script {
            live: Some(b(live)),
            activate: Outcome::Success,
            unhealthy_from: None,
            rollback_fails: false,
        }
    }

    /// An invocation's status, exit code and standard output.
    type End = (Status, i32, String);

    /// A fleet that answers the installer's command lines as scripted, keeping each instance's
    /// live build; every command and its targets are recorded.
    struct Fleet {
        scripts: BTreeMap<String, Script>,
        live: RefCell<BTreeMap<String, Option<BuildNumber>>>,
        checks: RefCell<BTreeMap<String, u32>>,
        /// (what, instances) per command sent.
        sent: RefCell<Vec<(String, Vec<String>)>>,
        /// Per command: instance → how it ended.
        ends: RefCell<Vec<BTreeMap<String, End>>>,
    }

    impl Fleet {
        fn new(scripts: &[(&str, Script)]) -> Self {
            let scripts: BTreeMap<String, Script> = scripts
                .iter()
                .map(|(n, s)| ((*n).to_owned(), s.clone()))
                .collect();
            let live = scripts.iter().map(|(n, s)| (n.clone(), s.live)).collect();
            Self {
                scripts,
                live: RefCell::new(live),
                checks: RefCell::default(),
                sent: RefCell::default(),
                ends: RefCell::default(),
            }
        }

        fn answer(&self, line: &str, id: &str) -> End {
            let s = &self.scripts[id];
            let mut live = self.live.borrow_mut();
            let now = live[id];
            let (mut r, outcome) = if line.contains("'activate'") {
                let build = b(2);
                let mut r = Report::new("activate");
                r.build = Some(build);
                r.previous_build = now;
                if s.activate == Outcome::Success {
                    live.insert(id.to_owned(), Some(build));
                }
                (r, s.activate)
            } else if line.contains("'--check'") {
                let mut checks = self.checks.borrow_mut();
                let n = checks.entry(id.to_owned()).or_default();
                *n += 1;
                let mut r = Report::new("status");
                r.build = now;
                let sick = s.unhealthy_from.is_some_and(|from| *n >= from);
                (
                    r,
                    if sick {
                        Outcome::Failed
                    } else {
                        Outcome::Success
                    },
                )
            } else {
                let to = line
                    .split("'--to' '")
                    .nth(1)
                    .unwrap()
                    .split('\'')
                    .next()
                    .unwrap();
                let to = BuildNumber::parse(to).unwrap();
                let mut r = Report::new("rollback");
                r.previous_build = now;
                if s.rollback_fails {
                    r.build = now;
                    (r, Outcome::Failed)
                } else {
                    r.build = Some(to);
                    live.insert(id.to_owned(), Some(to));
                    (r, Outcome::Success)
                }
            };
            let error = (outcome != Outcome::Success).then(|| "scripted failure".to_owned());
            r.finish(outcome, error);
            let code = r.exit_code as i32;
            let status = if code == 0 {
                Status::Success
            } else {
                Status::Failed
            };
            (status, code, serde_json::to_string(&r).unwrap())
        }
    }

    impl Transport for Fleet {
        fn name(&self) -> &'static str {
            "fake"
        }
        async fn send(&self, r: &SendRequest) -> anyhow::Result<CommandHandle> {
            let Some(Targets::Instances(ids)) = &r.targets else {
                anyhow::bail!("instances by id");
            };
            assert_eq!(r.max_concurrency, Rate::Count(ids.len() as u32));
            let what = ["'activate'", "'--check'", "'rollback'"]
                .into_iter()
                .find(|w| r.line.contains(w))
                .unwrap()
                .trim_matches(|c| c == '\'' || c == '-')
                .to_owned();
            self.sent.borrow_mut().push((what, ids.clone()));
            let ends = ids
                .iter()
                .map(|id| (id.clone(), self.answer(&r.line, id)))
                .collect();
            let mut all = self.ends.borrow_mut();
            all.push(ends);
            Ok(CommandHandle {
                id: (all.len() - 1).to_string(),
            })
        }
        async fn poll(&self, h: &CommandHandle) -> anyhow::Result<PollResult> {
            let ends = &self.ends.borrow()[h.id.parse::<usize>()?];
            Ok(PollResult {
                invocations: ends
                    .iter()
                    .map(|(id, (status, code, _))| InvocationState {
                        instance: id.clone(),
                        status: status.clone(),
                        detail: None,
                        exit_code: Some(*code),
                        duration: None,
                    })
                    .collect(),
                command_done: true,
                target_count: Some(ends.len()),
            })
        }
        async fn output(&self, h: &CommandHandle, i: &str) -> anyhow::Result<InvocationOutput> {
            let (_, code, stdout) = &self.ends.borrow()[h.id.parse::<usize>()?][i];
            Ok(InvocationOutput {
                stdout: stdout.clone(),
                exit_code: Some(*code),
                ..Default::default()
            })
        }
        async fn cancel(&self, _: &CommandHandle) -> anyhow::Result<()> {
            Ok(())
        }
        async fn instances(&self, _: &[super::super::TagFilter]) -> anyhow::Result<Vec<String>> {
            Ok(self.scripts.keys().rev().cloned().collect())
        }
    }

    fn rollout(ids: &[&str], canary: Option<u32>, wave: u32, bake_ms: u64) -> Rollout {
        let action = Action::Deploy {
            build: b(2),
            store: None,
            s3_endpoint: None,
            template_reviewed: false,
        };
        let invocation = InstallerInvocation {
            program: "installer".into(),
            config: None,
            lock_timeout: None,
        };
        Rollout {
            app: "app".into(),
            request: SendRequest {
                line: installer_line(&invocation, &action).unwrap(),
                comment: comment("app", &action),
                targets: Some(Targets::Instances(
                    ids.iter().map(|s| (*s).to_owned()).collect(),
                )),
                max_concurrency: Rate::Count(wave),
                max_errors: Rate::Count(0),
                execution_timeout: Duration::from_secs(60),
                delivery_timeout: Duration::from_secs(60),
                output_s3: None,
            },
            action,
            invocation,
            transport: TransportKind::Ssm,
            ssm_endpoint: None,
            canary: canary.map(Rate::Count),
            bake: Duration::from_millis(bake_ms),
            bake_every: Duration::from_millis(bake_ms / 3),
            order: Vec::new(),
            rollback_on_failure: true,
            ask_on_interrupt: false,
            verbose: false,
            json: false,
        }
    }

    fn run(fleet: &Fleet, r: &Rollout) -> RolloutResult {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(go(fleet, r))
            .unwrap()
    }

    fn sent(fleet: &Fleet) -> Vec<String> {
        fleet
            .sent
            .borrow()
            .iter()
            .map(|(what, ids)| format!("{what} {}", ids.join(",")))
            .collect()
    }

    const FIVE: [&str; 5] = ["i-05", "i-03", "i-01", "i-04", "i-02"];

    fn five(change: impl Fn(&str, &mut Script)) -> Fleet {
        let scripts: Vec<(&str, Script)> = FIVE
            .iter()
            .map(|n| {
                let mut s = good(1);
                change(n, &mut s);
                (*n, s)
            })
            .collect();
        Fleet::new(&scripts)
    }

    #[test]
    fn a_good_build_goes_canary_first_then_in_waves_in_id_order() {
        let fleet = five(|_, _| {});
        let result = run(&fleet, &rollout(&FIVE, Some(1), 2, 0));
        assert_eq!(
            sent(&fleet),
            ["activate i-01", "activate i-02,i-03", "activate i-04,i-05"]
        );
        assert_eq!(result.exit_code(), ExitCode::Success);
        assert!(!result.mixed());
        let order: Vec<&str> = result
            .summary
            .instances
            .iter()
            .map(|i| i.instance.as_str())
            .collect();
        assert_eq!(order, ["i-01", "i-02", "i-03", "i-04", "i-05"]);
        assert!(result
            .closing_line()
            .contains("all 5 instances on Build000002"));
        assert!(fleet.live.borrow().values().all(|l| *l == Some(b(2))));
    }

    #[test]
    fn a_canary_that_rolls_itself_back_stops_the_rollout_alone() {
        let fleet = five(|n, s| {
            if n == "i-01" {
                s.activate = Outcome::RolledBack;
            }
        });
        let result = run(&fleet, &rollout(&FIVE, Some(1), 2, 0));
        assert_eq!(sent(&fleet), ["activate i-01"]);
        assert_eq!(result.exit_code(), ExitCode::RolledBack);
        assert!(result.rolled_back.is_empty() && result.not_restored.is_empty());
        let rest = &result.summary.instances[1..];
        assert!(rest.iter().all(|i| i.status == Status::Cancelled
            && i.detail.as_deref().unwrap().starts_with("not started")));
        assert!(
            result
                .closing_line()
                .contains("the canary i-01 did not succeed"),
            "{}",
            result.closing_line()
        );
    }

    #[test]
    fn a_failure_in_a_later_wave_rolls_back_every_instance_that_switched() {
        // i-03 ran Build000003 before; the others Build000001.
        let fleet = five(|n, s| match n {
            "i-04" => s.activate = Outcome::Failed,
            "i-03" => s.live = Some(b(3)),
            _ => {}
        });
        let result = run(&fleet, &rollout(&FIVE, Some(1), 2, 0));
        assert_eq!(
            sent(&fleet),
            [
                "activate i-01",
                "activate i-02,i-03",
                "activate i-04,i-05",
                "rollback i-01,i-02,i-05",
                "rollback i-03",
            ]
        );
        assert_eq!(result.exit_code(), ExitCode::RolledBack);
        assert!(!result.mixed());
        let live = fleet.live.borrow();
        assert_eq!(live["i-03"], Some(b(3)));
        for n in ["i-01", "i-02", "i-04", "i-05"] {
            assert_eq!(live[n], Some(b(1)), "{n}");
        }
        assert_eq!(result.rolled_back.len(), 4);
        assert!(result.stopped.as_deref().unwrap().contains("i-04"));
        assert!(result
            .epilogue()
            .contains("rolled back: i-03 to Build000003: done"));
    }

    #[test]
    fn an_instance_that_cannot_be_restored_is_named_and_exits_4() {
        let fleet = five(|n, s| match n {
            "i-04" => s.activate = Outcome::Failed,
            "i-02" => s.rollback_fails = true,
            _ => {}
        });
        let result = run(&fleet, &rollout(&FIVE, Some(1), 2, 0));
        assert_eq!(result.exit_code(), ExitCode::OperatorNeeded);
        assert!(result.mixed());
        assert_eq!(result.not_restored.len(), 1);
        assert_eq!(result.not_restored[0].0, "i-02");
        assert!(result.closing_line().contains("NOT restored: i-02"));

        // Without the rollback, what switched stays switched, and says how to return it.
        let fleet = five(|n, s| {
            if n == "i-04" {
                s.activate = Outcome::Failed;
            }
        });
        let mut r = rollout(&FIVE, Some(1), 2, 0);
        r.rollback_on_failure = false;
        let result = run(&fleet, &r);
        assert!(sent(&fleet).iter().all(|s| s.starts_with("activate")));
        assert_eq!(result.exit_code(), ExitCode::OperatorNeeded);
        assert_eq!(result.not_restored.len(), 4);
        assert!(result.not_restored[0].1.contains("--to Build000001"));
    }

    #[test]
    fn a_canary_unhealthy_during_the_bake_is_rolled_back_before_any_wave() {
        let fleet = five(|n, s| {
            if n == "i-01" {
                s.unhealthy_from = Some(2);
            }
        });
        let result = run(&fleet, &rollout(&FIVE, Some(1), 2, 300));
        assert_eq!(
            sent(&fleet),
            ["activate i-01", "check i-01", "check i-01", "rollback i-01"]
        );
        assert_eq!(result.bake_checks, 2);
        assert_eq!(result.exit_code(), ExitCode::RolledBack);
        assert!(result
            .stopped
            .as_deref()
            .unwrap()
            .contains("the canary i-01 failed its health check"));
        assert_eq!(fleet.live.borrow()["i-01"], Some(b(1)));

        // A healthy canary is checked through the whole bake, then the waves go.
        let fleet = five(|_, _| {});
        let result = run(&fleet, &rollout(&FIVE, Some(1), 4, 300));
        let s = sent(&fleet);
        assert!(
            s.iter().filter(|c| c.starts_with("check")).count() >= 3,
            "{s:?}"
        );
        assert_eq!(s.last().unwrap(), "activate i-02,i-03,i-04,i-05");
        assert_eq!(result.exit_code(), ExitCode::Success);
    }

    #[test]
    fn tags_and_order_decide_a_stable_order_and_percentages_round_down() {
        let fleet = five(|_, _| {});
        let mut r = rollout(&FIVE, None, 1, 0);
        r.request.targets = Some(Targets::parse(&["tag:Role=web".to_owned()]).unwrap());
        r.order = vec!["i-04".into(), "i-02".into()];
        r.request.max_concurrency = Rate::Percent(40);
        let result = run(&fleet, &r);
        assert_eq!(
            sent(&fleet),
            ["activate i-04,i-02", "activate i-01,i-03", "activate i-05"]
        );
        assert_eq!(result.exit_code(), ExitCode::Success);
        assert!(ordered(vec!["i-01".into()], &["i-09".into()])
            .unwrap_err()
            .0
            .contains("not among the targets"));
        assert_eq!(
            stages(30, Some(Rate::Percent(10)), Rate::Percent(25)).len(),
            1 + 4
        );
        assert_eq!(stages(3, Some(Rate::Count(5)), Rate::Count(2)).len(), 1);
        assert_eq!(budget(Rate::Percent(10), 30), 3);
        assert_eq!(
            bake_interval(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
        assert_eq!(
            bake_interval(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
    }
}
