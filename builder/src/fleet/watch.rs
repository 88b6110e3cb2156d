//! Waiting for a sent command: poll with backoff until every instance is terminal, print each
//! instance's state as it changes, fetch each finished instance's output once, and turn an
//! interrupt (Ctrl-C) into a cancel.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc::UnboundedReceiver;

use super::{CommandHandle, InvocationOutput, InvocationState, Status, Transport};

/// How [`watch`] polls and when it stops.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The first wait between polls, and the wait again after anything changed.
    pub poll_initial: Duration,
    /// The longest wait between polls (it grows by half after each quiet poll).
    pub poll_max: Duration,
    /// How many invocations to expect (the instance ids sent), if known.
    pub expected: Option<usize>,
    /// Stop waiting (cancel, then report) after this long.
    pub deadline: Duration,
    /// After a cancel, how long to wait for the invocations to say they stopped.
    pub cancel_grace: Duration,
    /// With no invocation at all, how long before concluding that no instance matched.
    pub empty_grace: Duration,
    /// Print state changes on stderr.
    pub live: bool,
}

impl WatchOptions {
    /// Suits SSM: 0.5 s, growing to 5 s.
    pub fn ssm(expected: Option<usize>, deadline: Duration) -> Self {
        Self {
            poll_initial: Duration::from_millis(500),
            poll_max: Duration::from_secs(5),
            expected,
            deadline,
            cancel_grace: Duration::from_secs(30),
            empty_grace: Duration::from_secs(5),
            live: true,
        }
    }

    /// Suits the local transport: polls are free.
    pub fn local(deadline: Duration) -> Self {
        Self {
            poll_initial: Duration::from_millis(100),
            poll_max: Duration::from_millis(500),
            expected: Some(1),
            deadline,
            cancel_grace: Duration::from_secs(15),
            empty_grace: Duration::ZERO,
            live: true,
        }
    }
}

/// One instance at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRun {
    pub state: InvocationState,
    pub output: InvocationOutput,
}

impl InstanceRun {
    /// An instance a command never started (a stopped round or rollout), and why.
    pub fn not_started(instance: &str, why: &str) -> Self {
        Self {
            state: InvocationState {
                instance: instance.to_owned(),
                status: Status::Cancelled,
                detail: Some(why.to_owned()),
                exit_code: None,
                duration: None,
            },
            output: InvocationOutput::default(),
        }
    }
}

/// How waiting ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Every instance seen, sorted by name.
    pub instances: Vec<InstanceRun>,
    /// The operator interrupted and the command was cancelled.
    pub interrupted: bool,
    /// Waiting stopped for another reason (deadline); says why.
    pub gave_up: Option<String>,
}

/// Consecutive failed polls tolerated before giving up (the SDK already retries each call).
const MAX_POLL_FAILURES: u32 = 5;
/// Attempts to fetch a finished instance's output.
const MAX_OUTPUT_ATTEMPTS: u32 = 5;

fn stamp(start: Instant) -> String {
    format!("[{:>7.1}s]", start.elapsed().as_secs_f64())
}

/// Polls `handle` until every instance is terminal (or no instance matched, or the operator
/// interrupted twice / the cancel grace ran out, or the deadline passed). Each message on
/// `interrupts` is one Ctrl-C: the first cancels the command and keeps waiting up to
/// `cancel_grace` for the instances to stop; the second stops waiting at once.
pub async fn watch<T: Transport>(
    transport: &T,
    handle: &CommandHandle,
    options: &WatchOptions,
    interrupts: &mut UnboundedReceiver<()>,
) -> anyhow::Result<Watched> {
    let start = Instant::now();
    let mut known: BTreeMap<String, InvocationState> = BTreeMap::new();
    let mut outputs: HashMap<String, InvocationOutput> = HashMap::new();
    let mut output_attempts: HashMap<String, u32> = HashMap::new();
    let mut running_since: HashMap<String, Instant> = HashMap::new();
    let mut observed: HashMap<String, Duration> = HashMap::new();
    let mut interval = options.poll_initial;
    let mut cancelled_at: Option<Instant> = None;
    let mut interrupted = false;
    let mut gave_up: Option<String> = None;
    let mut poll_failures = 0u32;
    let mut stop_now = false;

    loop {
        let mut changed = false;
        match transport.poll(handle).await {
            Err(e) => {
                poll_failures += 1;
                if poll_failures >= MAX_POLL_FAILURES {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot follow command `{}` through {} ({poll_failures} polls failed in a row); it may still be running",
                            handle.id,
                            transport.name()
                        )
                    });
                }
                if options.live {
                    eprintln!("{} poll failed ({e:#}); trying again", stamp(start));
                }
            }
            Ok(poll) => {
                poll_failures = 0;
                for inv in poll.invocations {
                    let before = known.get(&inv.instance);
                    if before.map(|b| &b.status) != Some(&inv.status) {
                        changed = true;
                        if inv.status == Status::InProgress {
                            running_since
                                .entry(inv.instance.clone())
                                .or_insert_with(Instant::now);
                        }
                        if inv.status.is_terminal() {
                            if let Some(t) = running_since.get(&inv.instance) {
                                observed.insert(inv.instance.clone(), t.elapsed());
                            }
                        } else if options.live {
                            let from = before
                                .map(|b| format!("{} → ", b.status))
                                .unwrap_or_default();
                            eprintln!(
                                "{} {}: {from}{}{}",
                                stamp(start),
                                inv.instance,
                                inv.status,
                                inv.detail
                                    .as_deref()
                                    .filter(|d| *d != inv.status.as_str())
                                    .map(|d| format!(" ({d})"))
                                    .unwrap_or_default()
                            );
                        }
                    }
                    known.insert(inv.instance.clone(), inv);
                }
                // Fetch each finished instance's output once, and say how it ended.
                for inv in known.values() {
                    if !inv.status.is_terminal() || outputs.contains_key(&inv.instance) {
                        continue;
                    }
                    let attempts = output_attempts.entry(inv.instance.clone()).or_default();
                    *attempts += 1;
                    let output = match transport.output(handle, &inv.instance).await {
                        Ok(o) => o,
                        Err(e) if *attempts < MAX_OUTPUT_ATTEMPTS => {
                            if options.live {
                                eprintln!(
                                    "{} {}: output not available yet ({e:#})",
                                    stamp(start),
                                    inv.instance
                                );
                            }
                            continue;
                        }
                        Err(e) => InvocationOutput {
                            stderr: format!(
                                "(builder could not fetch this instance's output: {e:#})"
                            ),
                            ..InvocationOutput::default()
                        },
                    };
                    if options.live {
                        let code = output.exit_code.or(inv.exit_code);
                        eprintln!(
                            "{} {}: {}{}{}",
                            stamp(start),
                            inv.instance,
                            inv.status,
                            inv.detail
                                .as_deref()
                                .filter(|d| *d != inv.status.as_str())
                                .map(|d| format!(" ({d})"))
                                .unwrap_or_default(),
                            code.map(|c| format!(", exit {c}")).unwrap_or_default()
                        );
                    }
                    outputs.insert(inv.instance.clone(), output);
                    changed = true;
                }
                let count = known.len();
                let all_done = known.values().all(|i| i.status.is_terminal())
                    && known.keys().all(|k| outputs.contains_key(k));
                let expected = options.expected.or(poll.target_count).filter(|n| *n > 0);
                let finished = if count == 0 {
                    // SSM resolves tags to instances shortly after the send: nothing listed and
                    // the command finished (or still nothing after a while) means no match.
                    let none_targeted = poll.target_count.unwrap_or(0) == 0;
                    let waited = start.elapsed();
                    (none_targeted && poll.command_done && waited >= options.empty_grace)
                        || (poll.target_count == Some(0) && waited >= options.empty_grace * 6)
                        || cancelled_at.is_some()
                } else {
                    all_done && expected.is_none_or(|n| count >= n)
                };
                if finished {
                    break;
                }
            }
        }

        if stop_now {
            break;
        }
        if let Some(at) = cancelled_at {
            if at.elapsed() >= options.cancel_grace {
                break;
            }
        } else if start.elapsed() >= options.deadline {
            let why = format!(
                "gave up waiting after {}s: cancelled command `{}`",
                options.deadline.as_secs(),
                handle.id
            );
            if options.live {
                eprintln!("{} {why}", stamp(start));
            }
            if let Err(e) = transport.cancel(handle).await {
                eprintln!("{} cannot cancel: {e:#}", stamp(start));
            }
            gave_up = Some(why);
            cancelled_at = Some(Instant::now());
        }

        interval = if changed {
            options.poll_initial
        } else {
            (interval * 3 / 2).min(options.poll_max)
        };
        tokio::select! {
            biased;
            Some(()) = interrupts.recv() => {
                if cancelled_at.is_some() && interrupted {
                    eprintln!("{} interrupted again: not waiting any longer", stamp(start));
                    stop_now = true;
                } else {
                    eprintln!(
                        "{} interrupted: cancelling command `{}` (Ctrl-C again to stop waiting)",
                        stamp(start),
                        handle.id
                    );
                    if let Err(e) = transport.cancel(handle).await {
                        eprintln!("{} cannot cancel: {e:#}", stamp(start));
                    }
                    interrupted = true;
                    cancelled_at.get_or_insert_with(Instant::now);
                }
            }
            _ = tokio::time::sleep(interval) => {}
        }
    }

    let instances = known
        .into_values()
        .map(|mut state| {
            let mut output = outputs.remove(&state.instance).unwrap_or_default();
            if !state.status.is_terminal() {
                let was = state.status.clone();
                state.status = if cancelled_at.is_some() {
                    Status::Cancelled
                } else {
                    Status::Other("Unknown".into())
                };
                state.detail = Some(format!(
                    "still {was} when builder stopped waiting; it may yet finish"
                ));
            }
            if output.duration.is_none() {
                output.duration = state
                    .duration
                    .or_else(|| observed.get(&state.instance).copied())
                    .or_else(|| running_since.get(&state.instance).map(|t| t.elapsed()));
            }
            InstanceRun { state, output }
        })
        .collect();
    Ok(Watched {
        instances,
        interrupted,
        gave_up,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{PollResult, SendRequest};
    use std::cell::RefCell;

    /// A scripted transport: each poll returns the next scripted result (the last repeats).
    struct Scripted {
        polls: RefCell<Vec<PollResult>>,
        cancels: RefCell<u32>,
        outputs: RefCell<u32>,
    }

    impl Transport for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        async fn send(&self, _: &SendRequest) -> anyhow::Result<CommandHandle> {
            Ok(CommandHandle { id: "c".into() })
        }
        async fn poll(&self, _: &CommandHandle) -> anyhow::Result<PollResult> {
            let mut p = self.polls.borrow_mut();
            Ok(if p.len() > 1 {
                p.remove(0)
            } else {
                p[0].clone()
            })
        }
        async fn output(&self, _: &CommandHandle, i: &str) -> anyhow::Result<InvocationOutput> {
            *self.outputs.borrow_mut() += 1;
            Ok(InvocationOutput {
                stdout: format!("out of {i}"),
                exit_code: Some(0),
                ..Default::default()
            })
        }
        async fn cancel(&self, _: &CommandHandle) -> anyhow::Result<()> {
            *self.cancels.borrow_mut() += 1;
            Ok(())
        }
    }

    fn inv(i: &str, s: Status) -> InvocationState {
        InvocationState {
            instance: i.into(),
            status: s,
            detail: None,
            exit_code: None,
            duration: None,
        }
    }

    fn fast(expected: Option<usize>) -> WatchOptions {
        WatchOptions {
            poll_initial: Duration::from_millis(1),
            poll_max: Duration::from_millis(2),
            expected,
            deadline: Duration::from_secs(30),
            cancel_grace: Duration::from_millis(20),
            empty_grace: Duration::ZERO,
            live: false,
        }
    }

    fn scripted(polls: Vec<PollResult>) -> Scripted {
        Scripted {
            polls: RefCell::new(polls),
            cancels: RefCell::new(0),
            outputs: RefCell::new(0),
        }
    }

    fn run(t: &Scripted, o: &WatchOptions, interrupt: bool) -> Watched {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        if interrupt {
            tx.send(()).unwrap();
        }
        rt.block_on(watch(t, &CommandHandle { id: "c".into() }, o, &mut rx))
            .unwrap()
    }

    #[test]
    fn waits_for_every_expected_instance_and_fetches_output_once() {
        let p = |v: Vec<InvocationState>| PollResult {
            invocations: v,
            command_done: false,
            target_count: None,
        };
        let t = scripted(vec![
            p(vec![]),
            p(vec![inv("b", Status::Pending)]),
            p(vec![inv("b", Status::Success)]),
            p(vec![
                inv("b", Status::Success),
                inv("a", Status::InProgress),
            ]),
            p(vec![inv("b", Status::Success), inv("a", Status::Failed)]),
        ]);
        let w = run(&t, &fast(Some(2)), false);
        let names: Vec<&str> = w
            .instances
            .iter()
            .map(|r| r.state.instance.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(w.instances[0].state.status, Status::Failed);
        assert_eq!(w.instances[1].output.stdout, "out of b");
        assert_eq!(*t.outputs.borrow(), 2);
        assert!(!w.interrupted);
    }

    #[test]
    fn no_matching_instance_ends_the_wait() {
        let t = scripted(vec![PollResult {
            invocations: vec![],
            command_done: true,
            target_count: Some(0),
        }]);
        let w = run(&t, &fast(None), false);
        assert!(w.instances.is_empty());
    }

    #[test]
    fn interrupt_cancels_and_reports_what_finished() {
        let t = scripted(vec![PollResult {
            invocations: vec![inv("a", Status::Success), inv("b", Status::InProgress)],
            command_done: false,
            target_count: Some(2),
        }]);
        let w = run(&t, &fast(None), true);
        assert!(w.interrupted);
        assert_eq!(*t.cancels.borrow(), 1);
        assert_eq!(w.instances[0].state.status, Status::Success);
        assert_eq!(w.instances[1].state.status, Status::Cancelled);
        assert!(w.instances[1]
            .state
            .detail
            .as_deref()
            .unwrap()
            .contains("still InProgress"));
    }

    #[test]
    fn deadline_cancels() {
        let t = scripted(vec![PollResult {
            invocations: vec![inv("a", Status::InProgress)],
            command_done: false,
            target_count: None,
        }]);
        let mut o = fast(None);
        o.deadline = Duration::from_millis(10);
        let w = run(&t, &o, false);
        assert!(w.gave_up.as_deref().unwrap().contains("gave up"));
        assert_eq!(*t.cancels.borrow(), 1);
        assert_eq!(w.instances[0].state.status, Status::Cancelled);
    }
}
