//! Notifications as server-sent events: the vault's job events (started, succeeded, failed)
//! after `?since=` (or the `Last-Event-ID` a reconnecting browser sends), and the progress of
//! running jobs (a step starting or ending), polled from the database twice a second.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Extension;
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;

use super::pages::op_label;
use super::{utc, Portal, Session};
use crate::model::Job;

#[derive(Deserialize)]
pub(super) struct Since {
    since: Option<i64>,
}

struct Cursor {
    portal: Portal,
    since: i64,
    /// Per running job: its progress and the step shown last.
    seen: HashMap<i64, String>,
}

/// What a running job is doing now (the running step, else the last one done).
fn doing(j: &Job) -> String {
    let step = j
        .steps
        .iter()
        .find(|s| s.status == "running")
        .or_else(|| j.steps.iter().rev().find(|s| s.status != "pending"));
    match step {
        Some(s) => format!("{}: {}", s.name, s.status),
        None => "starting".to_string(),
    }
}

impl Cursor {
    fn poll(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let v = &self.portal.vault;
        if let Ok(events) = v.events(self.since, 100) {
            for e in events {
                self.since = e.id;
                if e.job.is_none() {
                    continue;
                }
                let data = serde_json::json!({
                    "id": e.id, "level": e.level, "text": e.message, "job": e.job,
                    "vm": e.vm, "time": utc(e.at),
                });
                out.push(
                    SseEvent::default()
                        .event("note")
                        .id(e.id.to_string())
                        .data(data.to_string()),
                );
            }
        }
        if let Ok(jobs) = v.jobs(20) {
            let running: Vec<&Job> = jobs.iter().filter(|j| j.status == "running").collect();
            self.seen
                .retain(|id, _| running.iter().any(|j| j.id == *id));
            for j in running {
                let now = format!("{} ({}%)", doing(j), j.progress);
                if self.seen.get(&j.id) == Some(&now) {
                    continue;
                }
                self.seen.insert(j.id, now.clone());
                let vm = j.vm.as_deref().unwrap_or("-");
                let text = format!(
                    "{} of VM {vm} (job {}): {now}",
                    op_label(&j.operation),
                    j.id
                );
                let data = serde_json::json!({
                    "level": "progress", "text": text, "job": j.id, "vm": j.vm,
                    "time": utc(crate::db::now_ms()),
                });
                out.push(SseEvent::default().event("note").data(data.to_string()));
            }
        }
        out
    }
}

/// The notifications stream of a logged-in browser.
pub(super) async fn stream(
    State(p): State<Portal>,
    Extension(_s): Extension<Session>,
    Query(q): Query<Since>,
    h: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let last = h
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let since = last.max(q.since).unwrap_or(0).max(0);
    let cursor = Cursor {
        portal: p,
        since,
        seen: HashMap::new(),
    };
    let s = stream::unfold(cursor, |mut c| async move {
        loop {
            let batch = c.poll();
            if !batch.is_empty() {
                return Some((stream::iter(batch.into_iter().map(Ok)), c));
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    })
    .flatten();
    Sse::new(s).keep_alive(KeepAlive::default())
}
