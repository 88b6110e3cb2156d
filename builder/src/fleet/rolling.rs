//! `builder os-update` over the fleet: one instance after the other, each through a command of
//! its own, the next only once the previous one succeeded — and, when it was rebooted, once it
//! is back online in SSM. A failure stops the round; the instances after it are not started.

use std::time::{Duration, Instant};

use common::report::{ExitCode, Report};
use serde_json::json;

use super::local::LocalTransport;
use super::run::drive;
use super::ssm::SsmTransport;
use super::summary::{
    format_duration, installer_code, last_line, outcome_name, plural, truncate, worst_code,
    Instance, Kind, Summary,
};
use super::watch::{InstanceRun, Watched};
use super::{Rate, SendRequest, Status, Targets, Transport, TransportKind};

/// How often a rebooted instance's agent is asked about.
pub const ONLINE_POLL: Duration = Duration::from_secs(5);

/// What the summary reads from an `installer os-update --json` run.
#[derive(Debug, Clone, PartialEq)]
pub struct OsUpdate {
    pub reboot: bool,
}

impl OsUpdate {
    /// The REBOOT column: whether the server needed one and got it.
    fn reboot_text(&self, i: &Instance<Option<Report>>) -> String {
        let Some(r) = &i.result else {
            return if i.status == Status::Cancelled {
                "-".into()
            } else {
                "?".into()
            };
        };
        let flag = |key: &str| r.details.get(key).and_then(|v| v.as_bool());
        match (flag("rebooted"), flag("reboot_required")) {
            (Some(true), Some(true)) => "rebooted, still needed".into(),
            (Some(true), _) => "rebooted".into(),
            (_, Some(true)) if flag("reboot_requested") == Some(true) => "rebooting".into(),
            (_, Some(true)) => "needed".into(),
            (_, Some(false)) => "not needed".into(),
            _ => "?".into(),
        }
    }

    fn result_text(&self, i: &Instance<Option<Report>>) -> String {
        match &i.result {
            Some(r) => {
                let mut text = outcome_name(r.outcome).to_owned();
                if let Some(e) = &r.error {
                    text.push_str(": ");
                    text.push_str(e.lines().next().unwrap_or(""));
                }
                if !r.warnings.is_empty() {
                    let n = r.warnings.len();
                    text.push_str(&format!(" ({n} warning{})", plural(n)));
                }
                text
            }
            None => {
                let mut parts = i.why_not();
                if matches!(i.status, Status::Success | Status::Failed) {
                    parts.push("no installer report".into());
                }
                if let Some(line) = last_line(&i.stderr) {
                    parts.push(line.to_owned());
                }
                if parts.is_empty() {
                    i.status.to_string()
                } else {
                    parts.join(": ")
                }
            }
        }
    }
}

impl Kind for OsUpdate {
    type Result = Option<Report>;

    fn read(&self, stdout: &str) -> Option<Report> {
        Report::find_last_in(stdout)
    }

    fn ok(&self, i: &Instance<Option<Report>>) -> bool {
        i.exited_ok()
    }

    fn failure_code(&self, failed: &[&Instance<Option<Report>>]) -> ExitCode {
        let codes: Vec<Option<ExitCode>> = failed
            .iter()
            // An instance never started says nothing about the servers.
            .filter(|i| i.status != Status::Cancelled || i.result.is_some())
            .map(|i| installer_code(i, i.result.as_ref()))
            .collect();
        worst_code(&codes)
    }

    fn header(&self) -> &'static [&'static str] {
        &["INSTANCE", "STATUS", "EXIT", "DURATION", "REBOOT", "RESULT"]
    }

    fn row(&self, i: &Instance<Option<Report>>) -> Vec<String> {
        vec![
            i.instance.clone(),
            i.status.to_string(),
            i.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            format_duration(i.duration),
            self.reboot_text(i),
            truncate(&self.result_text(i), 100),
        ]
    }

    fn subject(&self) -> String {
        if self.reboot {
            "os-update --reboot".into()
        } else {
            "os-update".into()
        }
    }

    fn all_done(&self, total: usize, only: Option<&str>) -> String {
        match only {
            Some(name) => format!("{name} updated"),
            None => format!("all {total} instances updated, one at a time"),
        }
    }

    fn not_done(&self, failed: usize, total: usize, names: &str) -> String {
        format!(
            "{failed} of {total} instance{} not updated ({names})",
            plural(total)
        )
    }

    fn json_head(&self) -> serde_json::Value {
        json!({"command": "os-update", "reboot": self.reboot})
    }

    fn json_instance(&self, i: &Instance<Option<Report>>) -> serde_json::Value {
        json!({
            "reboot": self.reboot_text(i),
            "result": self.result_text(i),
            "report": i.result,
        })
    }

    fn failure_lines(&self, i: &Instance<Option<Report>>) -> (Option<String>, Vec<String>) {
        let meaning = installer_code(i, i.result.as_ref()).map(|c| c.meaning().to_owned());
        let mut lines = Vec::new();
        if let Some(r) = &i.result {
            if let Some(e) = &r.error {
                lines.extend(e.lines().map(|l| format!("error: {l}")));
            }
            lines.extend(r.warnings.iter().map(|w| format!("warning: {w}")));
        }
        (meaning, lines)
    }
}

/// One round over the fleet: the command line for every instance and how to reach them.
#[derive(Debug, Clone)]
pub struct Round {
    /// The request for the whole fleet; each instance gets a copy aimed at it alone.
    pub request: SendRequest,
    pub transport: TransportKind,
    pub ssm_endpoint: Option<String>,
    pub reboot: bool,
    /// How long a rebooted instance may take to be back online.
    pub reboot_timeout: Duration,
    /// How often it is asked about meanwhile.
    pub online_poll: Duration,
}

/// Runs the round and returns its summary.
pub fn execute(round: &Round) -> anyhow::Result<Summary<OsUpdate>> {
    common::runtime::shared()?.block_on(async {
        match round.transport {
            TransportKind::Ssm => {
                let t = SsmTransport::connect(round.ssm_endpoint.as_deref()).await?;
                go(&t, round).await
            }
            TransportKind::Local => go(&LocalTransport::new(), round).await,
        }
    })
}

async fn go<T: Transport>(t: &T, round: &Round) -> anyhow::Result<Summary<OsUpdate>> {
    let kind = OsUpdate {
        reboot: round.reboot,
    };
    let described = super::run::described(&round.request);
    // `None`: the local transport's one pseudo-instance.
    let ids: Vec<Option<String>> = match &round.request.targets {
        None => vec![None],
        Some(Targets::Instances(ids)) => ids.iter().cloned().map(Some).collect(),
        Some(Targets::Tags(tags)) => t.instances(tags).await?.into_iter().map(Some).collect(),
    };
    let names: Vec<&str> = ids
        .iter()
        .map(|i| i.as_deref().unwrap_or(super::LOCAL_INSTANCE))
        .collect();
    if !ids.is_empty() {
        eprintln!(
            "os-update: {} instance{} one at a time{}: {}",
            ids.len(),
            plural(ids.len()),
            if round.reboot {
                ", each back online before the next"
            } else {
                ""
            },
            names.join(", ")
        );
    }
    let mut runs: Vec<InstanceRun> = Vec::new();
    let mut command_ids = Vec::new();
    let mut stopped: Option<String> = None;
    let (mut interrupted, mut gave_up) = (false, None);
    for (n, id) in ids.iter().enumerate() {
        let name = names[n];
        if let Some(why) = &stopped {
            runs.push(InstanceRun::not_started(name, why));
            continue;
        }
        let mut request = round.request.clone();
        request.targets = id.clone().map(|i| Targets::Instances(vec![i]));
        request.max_concurrency = Rate::Count(1);
        let sent = drive(t, round.transport, &request, &request.line).await?;
        command_ids.push(sent.command_id);
        interrupted |= sent.watched.interrupted;
        if let Some(g) = sent.watched.gave_up {
            gave_up = Some(g);
        }
        let first = sent.watched.instances.first();
        let succeeded = first.is_some_and(|r| {
            r.state.status == Status::Success
                && r.output.exit_code.or(r.state.exit_code).unwrap_or(0) == 0
        });
        let rebooted = first
            .and_then(|r| kind.read(&r.output.stdout))
            .and_then(|r| r.details.get("rebooted").and_then(|v| v.as_bool()))
            == Some(true);
        runs.extend(sent.watched.instances);
        if interrupted || gave_up.is_some() || !succeeded {
            stopped = Some(format!("not started: {name} did not succeed"));
            continue;
        }
        if rebooted {
            if let Some(id) = id {
                if let Err(why) = wait_online(t, id, round.reboot_timeout, round.online_poll).await
                {
                    gave_up = Some(why.clone());
                    stopped = Some(format!("not started: {why}"));
                }
            }
        }
    }
    let watched = Watched {
        instances: runs,
        interrupted,
        gave_up,
    };
    Ok(Summary::new(
        kind,
        t.name(),
        command_ids.join(", "),
        described,
        watched,
    ))
}

/// Waits until `instance`'s agent reports online again.
async fn wait_online<T: Transport>(
    t: &T,
    instance: &str,
    timeout: Duration,
    poll: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    let mut told = false;
    loop {
        match t.online(instance).await {
            Ok(true) => {
                if told {
                    eprintln!(
                        "{instance}: back online after {}",
                        format_duration(Some(start.elapsed()))
                    );
                }
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => eprintln!("{instance}: cannot ask SSM whether it is online: {e:#}"),
        }
        if !told {
            eprintln!(
                "{instance}: rebooted; waiting for it to be back online in SSM (up to {})",
                format_duration(Some(timeout))
            );
            told = true;
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "{instance} was not back online in SSM within {} of its reboot",
                format_duration(Some(timeout))
            ));
        }
        tokio::time::sleep(poll.min(timeout)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{CommandHandle, InvocationOutput, InvocationState, PollResult};
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// Each instance ends as scripted; sends and online checks are recorded.
    struct Fleet {
        /// instance → (status, exit code, stdout)
        ends: BTreeMap<String, (Status, i32, String)>,
        sent: RefCell<Vec<String>>,
        online_checks: RefCell<u32>,
        /// `online` answers false this many times first.
        offline_for: u32,
    }

    impl Transport for Fleet {
        fn name(&self) -> &'static str {
            "fake"
        }
        async fn send(&self, r: &SendRequest) -> anyhow::Result<CommandHandle> {
            let Some(Targets::Instances(ids)) = &r.targets else {
                anyhow::bail!("one instance per command");
            };
            assert_eq!(ids.len(), 1);
            assert_eq!(r.max_concurrency, Rate::Count(1));
            self.sent.borrow_mut().push(ids[0].clone());
            Ok(CommandHandle { id: ids[0].clone() })
        }
        async fn poll(&self, h: &CommandHandle) -> anyhow::Result<PollResult> {
            let (status, code, _) = &self.ends[&h.id];
            Ok(PollResult {
                invocations: vec![InvocationState {
                    instance: h.id.clone(),
                    status: status.clone(),
                    detail: None,
                    exit_code: Some(*code),
                    duration: None,
                }],
                command_done: true,
                target_count: Some(1),
            })
        }
        async fn output(&self, h: &CommandHandle, _: &str) -> anyhow::Result<InvocationOutput> {
            let (_, code, stdout) = &self.ends[&h.id];
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
            Ok(self.ends.keys().cloned().collect())
        }
        async fn online(&self, _: &str) -> anyhow::Result<bool> {
            let mut n = self.online_checks.borrow_mut();
            *n += 1;
            Ok(*n > self.offline_for)
        }
    }

    fn report(details: serde_json::Value, exit: i32) -> String {
        let outcome = if exit == 0 { "success" } else { "failed" };
        format!(
            "{{\"command\":\"os-update\",\"outcome\":\"{outcome}\",\"exit_code\":{exit},\"details\":{details}}}"
        )
    }

    fn round(targets: Targets, reboot: bool) -> Round {
        Round {
            request: SendRequest {
                line: "installer os-update --json".into(),
                comment: "builder os-update app".into(),
                targets: Some(targets),
                max_concurrency: Rate::Count(50),
                max_errors: Rate::Count(0),
                execution_timeout: Duration::from_secs(60),
                delivery_timeout: Duration::from_secs(60),
                output_s3: None,
            },
            transport: TransportKind::Ssm,
            ssm_endpoint: None,
            reboot,
            reboot_timeout: Duration::from_secs(30),
            online_poll: Duration::from_millis(10),
        }
    }

    fn run_round(fleet: &Fleet, round: &Round) -> Summary<OsUpdate> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(go(fleet, round))
            .unwrap()
    }

    #[test]
    fn a_failure_stops_the_round_and_the_rest_is_not_started() {
        let fleet = Fleet {
            ends: BTreeMap::from([
                (
                    "i-00000001".into(),
                    (
                        Status::Success,
                        0,
                        report(json!({"reboot_required": false}), 0),
                    ),
                ),
                (
                    "i-00000002".into(),
                    (
                        Status::Failed,
                        1,
                        report(json!({"reboot_required": false}), 1),
                    ),
                ),
                ("i-00000003".into(), (Status::Success, 0, String::new())),
            ]),
            sent: RefCell::default(),
            online_checks: RefCell::default(),
            offline_for: 0,
        };
        let tags = Targets::parse(&["tag:Role=web".to_owned()]).unwrap();
        let summary = run_round(&fleet, &round(tags, false));
        assert_eq!(*fleet.sent.borrow(), ["i-00000001", "i-00000002"]);
        let rows: Vec<Vec<String>> = summary
            .instances
            .iter()
            .map(|i| summary.kind.row(i))
            .collect();
        assert_eq!(rows[0][4], "not needed");
        assert_eq!(rows[1][1], "Failed");
        assert_eq!(rows[2][1], "Cancelled");
        assert!(
            rows[2][5].contains("not started: i-00000002 did not succeed"),
            "{rows:?}"
        );
        assert_eq!(summary.exit_code(), ExitCode::Failed);
        assert_eq!(*fleet.online_checks.borrow(), 0, "nothing rebooted");
    }

    #[test]
    fn a_rebooted_instance_is_back_online_before_the_next_starts() {
        let fleet = Fleet {
            ends: BTreeMap::from([
                (
                    "i-00000001".into(),
                    (
                        Status::Success,
                        0,
                        report(json!({"reboot_required": false, "rebooted": true}), 0),
                    ),
                ),
                (
                    "i-00000002".into(),
                    (
                        Status::Success,
                        0,
                        report(json!({"reboot_required": false}), 0),
                    ),
                ),
            ]),
            sent: RefCell::default(),
            online_checks: RefCell::default(),
            offline_for: 1,
        };
        let ids = Targets::parse(&["i-00000001".to_owned(), "i-00000002".to_owned()]).unwrap();
        let summary = run_round(&fleet, &round(ids, true));
        assert_eq!(*fleet.sent.borrow(), ["i-00000001", "i-00000002"]);
        assert_eq!(*fleet.online_checks.borrow(), 2, "asked until online");
        assert_eq!(summary.kind.row(&summary.instances[0])[4], "rebooted");
        assert_eq!(summary.exit_code(), ExitCode::Success);
        assert!(summary.closing_line().contains("all 2 instances updated"));
    }
}
