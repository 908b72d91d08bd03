//! A recovery plan's script action: `sh -c COMMAND` on the vault's host, in its own process
//! group (killed whole at the timeout), with the plan's environment; the exit status decides,
//! the tails of stdout and stderr go into the step's detail.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::plan::ScriptAction;

/// The tail of a script's stdout and stderr kept in its step's detail.
const OUTPUT_TAIL: usize = 2000;
/// How long a script's output is still read after it exited (a background child may hold the
/// pipes open).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// What a script sees of its plan run (`LIFEBOAT_*`).
pub(crate) struct ScriptEnv<'a> {
    pub(crate) plan: &'a str,
    pub(crate) operation: &'a str,
    pub(crate) group: usize,
    pub(crate) vms: String,
}

/// The last `OUTPUT_TAIL` bytes of a pipe.
async fn tail_of<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * OUTPUT_TAIL {
                    kept.drain(..kept.len() - OUTPUT_TAIL);
                }
            }
        }
    }
    let start = kept.len().saturating_sub(OUTPUT_TAIL);
    String::from_utf8_lossy(&kept[start..]).trim().to_string()
}

/// Runs a script action: `Ok(detail)` when it exits 0, else `Err((why, detail))`.
pub(crate) async fn run_script(
    s: &ScriptAction,
    env: &ScriptEnv<'_>,
) -> Result<String, (String, String)> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&s.command)
        .env("LIFEBOAT_PLAN", env.plan)
        .env("LIFEBOAT_OPERATION", env.operation)
        .env("LIFEBOAT_GROUP", env.group.to_string())
        .env("LIFEBOAT_VMS", &env.vms)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        let why = format!("could not start `sh -c`: {e}");
        (why.clone(), why)
    })?;
    let out = tokio::spawn(tail_of(child.stdout.take()));
    let err = tokio::spawn(tail_of(child.stderr.take()));
    let waited = tokio::time::timeout(Duration::from_secs(s.timeout_secs), child.wait()).await;
    let status = match waited {
        Ok(r) => Some(r),
        Err(_) => {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) with a negative pid signals the process group the script
                // leads (it was started with process_group(0)); no memory is involved.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            let _ = child.wait().await;
            None
        }
    };
    let grab = |h: tokio::task::JoinHandle<String>| async move {
        let abort = h.abort_handle();
        match tokio::time::timeout(OUTPUT_GRACE, h).await {
            Ok(Ok(t)) => t,
            _ => {
                abort.abort();
                String::new()
            }
        }
    };
    let (stdout, stderr) = (grab(out).await, grab(err).await);
    let mut detail = Vec::new();
    if !stdout.is_empty() {
        detail.push(format!("stdout: {stdout}"));
    }
    if !stderr.is_empty() {
        detail.push(format!("stderr: {stderr}"));
    }
    let output = detail.join("\n");
    let last = |t: &str| t.lines().last().unwrap_or("").to_string();
    let said = if stderr.is_empty() {
        last(&stdout)
    } else {
        last(&stderr)
    };
    let said = if said.is_empty() {
        String::new()
    } else {
        format!(": {said}")
    };
    let why = match status {
        None => format!("timed out after {} s and was killed{said}", s.timeout_secs),
        Some(Err(e)) => format!("could not be waited for: {e}"),
        Some(Ok(st)) if st.success() => {
            return Ok(if output.is_empty() {
                "exited with status 0".to_string()
            } else {
                format!("exited with status 0\n{output}")
            })
        }
        Some(Ok(st)) => match st.code() {
            Some(c) => format!("exited with status {c}{said}"),
            None => format!("was killed by a signal ({st}){said}"),
        },
    };
    Err((why.clone(), format!("{why}\n{output}").trim().to_string()))
}
