//! `GET /api/connections` and `POST /api/connections/{id}/close`: the
//! request fans out to every worker over its control channel; each worker
//! answers from its own registry (its sessions write their rows when asked:
//! nothing is kept per connection for this, and nothing is locked).

use std::sync::Mutex;
use std::time::Duration;

use super::{AdminView, Request, Response};
use crate::control::{ConnRow, Control};

/// How long a worker has to answer.
const WORKER_ANSWER: Duration = Duration::from_secs(2);

/// The default and the largest `limit`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// `GET /api/connections?route=&server=&client=&limit=`: the longest-lived
/// first; `route`, `server`, `client` keep rows whose field contains the
/// value.
pub fn list(view: &AdminView, req: &Request) -> Response {
    let mut rows = gather(view);
    let keep = |field: &str, want: Option<&str>| want.is_none_or(|w| field.contains(w));
    let (route, server, client) = (req.query("route"), req.query("server"), req.query("client"));
    rows.retain(|r| {
        keep(&r.route, route) && keep(&r.server, server) && keep(&r.client.to_string(), client)
    });
    rows.sort_by_key(|r| std::cmp::Reverse(r.age_ms));
    let total = rows.len();
    let limit = req
        .query("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(DEFAULT_LIMIT)
        .min(MAX_LIMIT);
    rows.truncate(limit);
    let list: Vec<serde_json::Value> = rows.iter().map(row_json).collect();
    Response::json(
        200,
        &serde_json::json!({ "total": total, "connections": list }),
    )
}

/// Every worker's rows (a worker that does not answer in time is left out).
pub fn gather(view: &AdminView) -> Vec<ConnRow> {
    let mut waiting = Vec::new();
    for c in &view.control {
        let (tx, rx) = std::sync::mpsc::channel();
        if c.send(Control::Connections(tx)).is_ok() {
            waiting.push(rx);
        }
    }
    let mut rows = Vec::new();
    for rx in waiting {
        if let Ok(mut r) = rx.recv_timeout(WORKER_ANSWER) {
            rows.append(&mut r);
        }
    }
    rows
}

fn row_json(r: &ConnRow) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "client": r.client.to_string(),
        "route": r.route,
        "upstream": r.upstream,
        "server": r.server,
        "identity": r.identity,
        "age_secs": r.age_ms as f64 / 1000.0,
        "bytes_from_client": r.from_client,
        "bytes_from_backend": r.from_backend,
        "messages_from_client": r.messages_from_client,
        "messages_from_backend": r.messages_from_backend,
    })
}

/// `POST /api/connections/{id}/close` with an optional JSON body
/// `{"code": 4000, "reason": "..."}` (or `?code=&reason=`): default 1008
/// "closed by operator".
pub fn close(view: &AdminView, req: &Request, id: &str) -> Response {
    let bad = |m: String| Response::json(400, &serde_json::json!({ "error": m }));
    let mut parts = id.split('-').map(str::parse::<u64>);
    let (Some(Ok(worker)), Some(Ok(slot)), Some(Ok(serial)), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad(format!(
            "{id:?} is not a connection id (WORKER-SLOT-SERIAL, from GET /api/connections)"
        ));
    };
    let body: serde_json::Value = if req.body.is_empty() {
        serde_json::Value::Null
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(e) => return bad(format!("the body is not JSON: {e}")),
        }
    };
    let code = body
        .get("code")
        .and_then(serde_json::Value::as_u64)
        .or_else(|| req.query("code").and_then(|c| c.parse().ok()))
        .unwrap_or(1008);
    let code = match u16::try_from(code) {
        Ok(c)
            if c == 1000
                || c == 1001
                || c == 1008
                || c == 1011
                || c == 1012
                || (4000..=4999).contains(&c) =>
        {
            c
        }
        _ => {
            return bad(format!(
                "code {code}: expected 1000, 1001, 1008, 1011, 1012 or 4000–4999"
            ));
        }
    };
    let reason = body
        .get("reason")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .or_else(|| req.query("reason").map(|r| r.replace('+', " ")))
        .unwrap_or_else(|| "closed by operator".into());
    if reason.len() > 123 || reason.chars().any(char::is_control) {
        return bad("reason: at most 123 bytes, no control characters".into());
    }
    let Some(c) = usize::try_from(worker)
        .ok()
        .and_then(|w| view.control.get(w))
    else {
        return Response::json(
            404,
            &serde_json::json!({ "error": format!("no connection {id}") }),
        );
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let sent = c.send(Control::Close {
        slot: slot as usize,
        serial,
        code,
        reason: intern(&reason),
        reply: tx,
    });
    match sent.ok().and_then(|()| rx.recv_timeout(WORKER_ANSWER).ok()) {
        Some(true) => Response::json(
            200,
            &serde_json::json!({ "id": id, "closing": true, "code": code, "reason": reason }),
        ),
        _ => Response::json(
            404,
            &serde_json::json!({ "error": format!("no connection {id}") }),
        ),
    }
}

/// Close reasons are `&'static str` all the way to the relay's close frame:
/// an operator's reason is kept once per distinct text, at most
/// [`MAX_REASONS`] of them (then the default), so memory stays bounded.
fn intern(reason: &str) -> &'static str {
    const DEFAULT: &str = "closed by operator";
    static REASONS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    if reason == DEFAULT {
        return DEFAULT;
    }
    let mut all = REASONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(r) = all.iter().find(|r| **r == reason) {
        return r;
    }
    if all.len() >= MAX_REASONS {
        return DEFAULT;
    }
    let kept: &'static str = Box::leak(reason.to_string().into_boxed_str());
    all.push(kept);
    kept
}

/// Distinct operator close reasons kept (each at most 123 bytes).
const MAX_REASONS: usize = 64;
