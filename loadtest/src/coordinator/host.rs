//! The host of the quizzes: creates them over HTTP (it knows the correct answers), then drives
//! each live quiz with start/next/end once the players are connected (a self-paced quiz:
//! start, then end when every player is done), and kills a node for `node_failure`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::{mpsc, watch};

use crate::net::http_request;
use crate::player::correct_option;
use crate::protocol::{CreateQuiz, Created, NewQuestion};
use crate::scenario::{Mode, Scenario};
use crate::target::Target;

/// Create the scenario's quizzes (8 requests at a time); their ids and host tokens.
pub(super) async fn create_quizzes(
    target: &Target,
    sc: &Scenario,
    admin_key: Option<&str>,
) -> anyhow::Result<Vec<(String, String)>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(8));
    let mut handles = Vec::new();
    for i in 0..sc.load.quizzes as usize {
        let questions = (0..sc.quiz.questions)
            .map(|q| NewQuestion {
                text: format!("Question {q} of quiz {i}?"),
                options: (0..sc.quiz.options)
                    .map(|o| format!("option {o}"))
                    .collect(),
                correct: vec![correct_option(i, q, sc.quiz.options)],
                time_limit_ms: sc.quiz.time_limit_ms,
                points: sc.quiz.points,
            })
            .collect();
        let title = format!("loadtest {} #{i}", sc.name);
        let body = serde_json::to_vec(&CreateQuiz {
            title: &title,
            mode: match sc.load.mode {
                Mode::Live => "live",
                Mode::SelfPaced => "self_paced",
            },
            questions,
            expected_players: sc.quiz.expected_players,
        })?;
        let target = *target;
        let sem = sem.clone();
        let admin_key = admin_key.map(str::to_string);
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            let headers: Vec<(&str, &str)> = match &admin_key {
                Some(k) => vec![("X-Admin-Key", k.as_str())],
                None => Vec::new(),
            };
            let r = http_request(
                &target,
                None,
                "POST",
                "/v1/quizzes",
                &headers,
                Some(&body),
                Duration::from_secs(30),
            )
            .await
            .with_context(|| format!("creating quiz {i}"))?;
            if r.status != 201 {
                bail!(
                    "creating quiz {i}: HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
            let c: Created = serde_json::from_slice(&r.body)
                .with_context(|| format!("creating quiz {i}: response body"))?;
            Ok((c.quiz_id, c.host_token))
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await??);
    }
    Ok(out)
}

/// The host tasks of a run, one per quiz.
pub(super) struct Hosts {
    pub(super) handles: Vec<tokio::task::JoinHandle<()>>,
    pub(super) events: mpsc::UnboundedReceiver<HostEvent>,
    /// The workers' gauges summed, for the hosts' "everyone is connected" wait.
    pub(super) gauges: watch::Sender<Gauges>,
}

/// Start one host task per quiz: each waits for the players (at most until `start_by`) and
/// its stagger, then drives its quiz until the end or `deadline`.
pub(super) fn spawn_hosts(
    target: Target,
    sc: &Scenario,
    quizzes: &[(String, String)],
    start_by: tokio::time::Instant,
    deadline: tokio::time::Instant,
) -> Hosts {
    let sc = Arc::new(sc.clone());
    let (gauges, gauge_rx) = watch::channel(Gauges::default());
    let (events_tx, events) = mpsc::unbounded_channel::<HostEvent>();
    let handles = quizzes
        .iter()
        .enumerate()
        .map(|(i, (qid, tok))| {
            tokio::spawn(host_quiz(
                target,
                sc.clone(),
                i,
                qid.clone(),
                tok.clone(),
                gauge_rx.clone(),
                start_by,
                deadline,
                events_tx.clone(),
            ))
        })
        .collect();
    Hosts {
        handles,
        events,
        gauges,
    }
}

/// Live gauges from the workers, for the host's "everyone is connected" wait.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Gauges {
    pub(super) connected: u64,
    pub(super) joined: u64,
    pub(super) done: u64,
}

#[derive(Debug)]
pub(super) enum HostEvent {
    Opened { quiz: usize, question: u32 },
    Error(String),
}

/// One host action, retried on 429/5xx and network errors. Host actions are
/// not idempotent (a second `next` opens one more question), and an
/// attempt that timed out or answered 503 may have been applied: so before
/// each retry the quiz's state is read, and an action already applied
/// (the quiz is at `goal`) counts as done.
async fn host_call(
    target: &Target,
    quiz_id: &str,
    token: &str,
    verb: &str,
    goal: Goal,
) -> Result<(), String> {
    let path = format!("/v1/quizzes/{quiz_id}/{verb}");
    let mut last = String::new();
    for attempt in 0..5u64 {
        if attempt > 0 && reached(target, quiz_id, goal).await {
            return Ok(());
        }
        match http_request(
            target,
            None,
            "POST",
            &path,
            &[("Authorization", &format!("Bearer {token}"))],
            Some(b"{}"),
            Duration::from_secs(10),
        )
        .await
        {
            Ok(r) if r.status == 200 => return Ok(()),
            Ok(r) => {
                last = format!(
                    "POST {path}: HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                );
                if !matches!(r.status, 429 | 502 | 503 | 504) {
                    return Err(last);
                }
            }
            Err(e) => last = format!("POST {path}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(last)
}

/// Where a host action leads.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Running, with this question open (live) or none (self-paced).
    Running(Option<u32>),
    Ended,
}

/// Whether the quiz already is at `goal`. A failed read says no (the action
/// is sent again, and a wrong guess shows as a 409 host error).
async fn reached(target: &Target, quiz_id: &str, goal: Goal) -> bool {
    #[derive(serde::Deserialize)]
    struct View {
        state: String,
        current_question: Option<u32>,
    }
    let path = format!("/v1/quizzes/{quiz_id}");
    let Ok(r) = http_request(
        target,
        None,
        "GET",
        &path,
        &[],
        None,
        Duration::from_secs(10),
    )
    .await
    else {
        return false;
    };
    let Ok(v) = serde_json::from_slice::<View>(&r.body) else {
        return false;
    };
    match goal {
        Goal::Running(q) => v.state == "running" && v.current_question == q,
        Goal::Ended => v.state == "ended",
    }
}

#[allow(clippy::too_many_arguments)]
async fn host_quiz(
    target: Target,
    sc: Arc<Scenario>,
    quiz: usize,
    quiz_id: String,
    token: String,
    mut gauges: watch::Receiver<Gauges>,
    start_by: tokio::time::Instant,
    deadline: tokio::time::Instant,
    events: mpsc::UnboundedSender<HostEvent>,
) {
    let players = sc.load.players;
    // Wait until every player is connected (or gave up), or the lobby wait ends.
    let _ = tokio::time::timeout_at(
        start_by,
        gauges.wait_for(|g| g.connected + g.done >= players),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(sc.load.stagger_ms * quiz as u64)).await;
    if !sc.mode_is_live() {
        // Self-paced: open the quiz, let every player go through it at its
        // own pace, end it when all are done (or at the deadline).
        if let Err(e) = host_call(&target, &quiz_id, &token, "start", Goal::Running(None)).await {
            give_up(&target, quiz, &quiz_id, &token, &events, e).await;
            return;
        }
        let _ = events.send(HostEvent::Opened { quiz, question: 0 });
        let _ = tokio::time::timeout_at(deadline, gauges.wait_for(|g| g.done >= players)).await;
        if let Err(e) = host_call(&target, &quiz_id, &token, "end", Goal::Ended).await {
            let _ = events.send(HostEvent::Error(format!("quiz {quiz}: {e}")));
        }
        return;
    }
    let q = sc.quiz.questions;
    for i in 0..=q {
        if tokio::time::Instant::now() >= deadline {
            let _ = events.send(HostEvent::Error(format!(
                "quiz {quiz_id}: duration_s reached before the quiz ended"
            )));
            return;
        }
        let verb = if i == 0 {
            "start"
        } else if i < q {
            "next"
        } else {
            "end"
        };
        let goal = if i < q {
            Goal::Running(Some(i))
        } else {
            Goal::Ended
        };
        if let Err(e) = host_call(&target, &quiz_id, &token, verb, goal).await {
            if i < q {
                give_up(&target, quiz, &quiz_id, &token, &events, e).await;
            } else {
                let _ = events.send(HostEvent::Error(format!("quiz {quiz}: {e}")));
            }
            return;
        }
        if i < q {
            let _ = events.send(HostEvent::Opened { quiz, question: i });
            tokio::time::sleep(Duration::from_millis(sc.quiz.advance_after_ms)).await;
        }
    }
}

/// A host action failed for good: the error is reported, and the quiz is
/// ended if the server still takes that, so that its players get their
/// `quiz_ended` and the run ends now, failed, rather than at `duration_s`
/// with every player still waiting for a question that will not come.
async fn give_up(
    target: &Target,
    quiz: usize,
    quiz_id: &str,
    token: &str,
    events: &mpsc::UnboundedSender<HostEvent>,
    error: String,
) {
    let _ = events.send(HostEvent::Error(format!("quiz {quiz}: {error}")));
    if let Err(e) = host_call(target, quiz_id, token, "end", Goal::Ended).await {
        let _ = events.send(HostEvent::Error(format!(
            "quiz {quiz}: could not end it either ({e}): its players wait until duration_s"
        )));
    }
}

pub(super) fn kill_node(pid: u32) -> Result<(), String> {
    if pid <= 1 || pid == std::process::id() {
        return Err(format!("refusing to kill pid {pid}"));
    }
    // SAFETY: kill(2) with a positive pid and SIGKILL.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("kill {pid}: {}", std::io::Error::last_os_error()))
    }
}
