//! `lifeboat plan ...`: recovery plans through the vault's API (`/api/plans`).
//!
//! `create NAME --file plan.json` (`--replace` to change it), `list`, `show NAME` (groups,
//! actions, the latest run's steps), `delete NAME`; the operations `failover`,
//! `test-failover`, `cleanup`, `commit`, `reprotect`; and on the plan's latest run `confirm`
//! (a manual action), `retry` (the failed step), `skip` (the failed or waiting step),
//! `watch`. An operation, confirm, retry and skip follow the run until it ends or waits on a
//! manual action (`--no-wait`: return at once) and print its steps; a failed run is an error
//! carrying the step's message.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{s, Client, Format, VaultConn};

#[derive(Subcommand)]
pub enum PlanCmd {
    /// Create a plan from a JSON file: {"groups": [{"vms": [...], "pre": [...], "post":
    /// [...]}]}, actions {"script": {"name", "command", "timeout_secs", "on"}} or {"manual":
    /// {"name", "instructions", "on"}}.
    Create {
        name: String,
        #[arg(long)]
        file: PathBuf,
        /// Replace the plan's definition if it exists.
        #[arg(long)]
        replace: bool,
    },
    /// List plans and their latest runs.
    List,
    /// A plan's groups and actions, and its latest run step by step.
    Show { name: String },
    /// Delete a plan (not while a run is active).
    Delete { name: String },
    /// Fail every VM of the plan over, group by group.
    Failover {
        #[command(flatten)]
        run: RunArgs,
        /// `latest-processed` (default), `latest` or `latest-app-consistent` (no custom
        /// point in a plan).
        #[arg(long)]
        recovery_point: Option<String>,
        /// Shut each source VM down first (best effort).
        #[arg(long)]
        shutdown_source: bool,
    },
    /// DR drill of every VM of the plan.
    TestFailover {
        #[command(flatten)]
        run: RunArgs,
        /// `latest-processed` (default), `latest` or `latest-app-consistent`.
        #[arg(long)]
        recovery_point: Option<String>,
    },
    /// End the DR drill of every VM of the plan.
    Cleanup {
        #[command(flatten)]
        run: RunArgs,
        /// The operator's notes on the drill.
        #[arg(long)]
        notes: Option<String>,
    },
    /// Commit the failover of every VM of the plan.
    Commit {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Re-protect every VM of the plan (replication turns around).
    Reprotect {
        #[command(flatten)]
        run: RunArgs,
        /// Go ahead without asking.
        #[arg(long)]
        yes: bool,
    },
    /// Confirm the manual action the plan's latest run waits on.
    Confirm {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Run the failed step of the plan's latest run again.
    Retry {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Skip the failed (or waiting) step of the plan's latest run and go on.
    Skip {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Follow the plan's latest run until it ends or waits.
    Watch { name: String },
}

#[derive(Args)]
pub struct RunArgs {
    /// The plan.
    name: String,
    /// Return at once instead of following the run.
    #[arg(long)]
    no_wait: bool,
}

pub fn run(c: &VaultConn, cmd: PlanCmd) -> Result<()> {
    let cl = Client::new(c)?;
    match cmd {
        PlanCmd::Create {
            name,
            file,
            replace,
        } => create(&cl, &name, &file, replace),
        PlanCmd::List => list(&cl),
        PlanCmd::Show { name } => show(&cl, &name),
        PlanCmd::Delete { name } => {
            let v = cl.call(reqwest::Method::DELETE, &format!("/api/plans/{name}"), None)?;
            cl.print(&v, |_| println!("plan {name} deleted"))
        }
        PlanCmd::Failover {
            run,
            recovery_point,
            shutdown_source,
        } => {
            let mut b = point_body(recovery_point);
            if shutdown_source {
                b["shutdown_source"] = json!(true);
            }
            operate(&cl, &run, "failover", b)
        }
        PlanCmd::TestFailover {
            run,
            recovery_point,
        } => operate(&cl, &run, "test-failover", point_body(recovery_point)),
        PlanCmd::Cleanup { run, notes } => {
            let b = notes.map_or_else(|| json!({}), |n| json!({ "notes": n }));
            operate(&cl, &run, "cleanup-test-failover", b)
        }
        PlanCmd::Commit { run } => operate(&cl, &run, "commit", json!({})),
        PlanCmd::Reprotect { run, yes } => {
            if !yes {
                confirm_reprotect(&run.name)?;
            }
            operate(&cl, &run, "reprotect", json!({}))
        }
        PlanCmd::Confirm { run } => on_latest(&cl, &run, "confirm"),
        PlanCmd::Retry { run } => on_latest(&cl, &run, "retry"),
        PlanCmd::Skip { run } => on_latest(&cl, &run, "skip"),
        PlanCmd::Watch { name } => {
            let id = latest_id(&cl, &name)?;
            watch(&cl, &name, id)
        }
    }
}

/// A request body with the recovery-point choice, if given.
fn point_body(recovery_point: Option<String>) -> Value {
    recovery_point.map_or_else(|| json!({}), |p| json!({ "recovery_point": p }))
}

fn create(cl: &Client, name: &str, file: &PathBuf, replace: bool) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut def: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let Some(obj) = def.as_object_mut() else {
        bail!("{} must hold a JSON object with \"groups\"", file.display());
    };
    match obj.get("name").and_then(Value::as_str) {
        Some(n) if n != name => bail!(
            "{} names plan {n:?}, the command {name:?}: make them the same",
            file.display()
        ),
        _ => {
            obj.insert("name".into(), json!(name));
        }
    }
    let v = if replace {
        cl.call(
            reqwest::Method::PUT,
            &format!("/api/plans/{name}"),
            Some(def),
        )?
    } else {
        cl.post("/api/plans", def)?
    };
    cl.print(&v, |v| {
        let groups = v["definition"]["groups"].as_array().map_or(0, Vec::len);
        println!(
            "plan {name} {} ({groups} groups)",
            if replace { "replaced" } else { "created" }
        );
    })
}

fn list(cl: &Client) -> Result<()> {
    let v = cl.get("/api/plans")?;
    cl.print(&v, |v| {
        println!("{:<20} {:<7} {:<5} LATEST RUN", "PLAN", "GROUPS", "VMS");
        for p in v.as_array().into_iter().flatten() {
            let groups = p["definition"]["groups"].as_array();
            let vms: usize = groups
                .into_iter()
                .flatten()
                .map(|g| g["vms"].as_array().map_or(0, Vec::len))
                .sum();
            let run = &p["latest_run"];
            let latest = if run.is_object() {
                format!(
                    "{} {} (run {})",
                    s(run, "operation"),
                    s(run, "status"),
                    s(run, "id")
                )
            } else {
                "-".to_string()
            };
            println!(
                "{:<20} {:<7} {:<5} {latest}",
                s(p, "name"),
                groups.map_or(0, Vec::len),
                vms
            );
        }
    })
}

fn action_line(a: &Value) -> String {
    let on = |x: &Value| {
        x["on"]
            .as_array()
            .map(|l| {
                let names: Vec<&str> = l.iter().filter_map(Value::as_str).collect();
                names.join(", ")
            })
            .unwrap_or_else(|| "failover, test-failover".to_string())
    };
    if let Some(sc) = a.get("script") {
        format!(
            "script {:?}: `{}` (timeout {} s; on {})",
            s(sc, "name"),
            s(sc, "command"),
            s(sc, "timeout_secs"),
            on(sc)
        )
    } else if let Some(m) = a.get("manual") {
        format!(
            "manual {:?}: {} (on {})",
            s(m, "name"),
            s(m, "instructions"),
            on(m)
        )
    } else {
        a.to_string()
    }
}

fn show(cl: &Client, name: &str) -> Result<()> {
    let v = cl.get(&format!("/api/plans/{name}"))?;
    cl.print(&v, |p| {
        println!("Plan: {}", s(p, "name"));
        let groups = p["definition"]["groups"].as_array();
        for (i, g) in groups.into_iter().flatten().enumerate() {
            let vms: Vec<&str> = g["vms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!("Group {}: {}", i + 1, vms.join(", "));
            for a in g["pre"].as_array().into_iter().flatten() {
                println!("  pre:  {}", action_line(a));
            }
            for a in g["post"].as_array().into_iter().flatten() {
                println!("  post: {}", action_line(a));
            }
        }
        let run = &p["latest_run"];
        if run.is_object() {
            println!(
                "Latest run {}: {} {}",
                s(run, "id"),
                s(run, "operation"),
                s(run, "status")
            );
            print_steps(run);
            if let Some(e) = run["error"].as_str() {
                println!("  {e}");
            }
        } else {
            println!("Latest run: none");
        }
    })
}

fn print_steps(run: &Value) {
    for st in run["steps"].as_array().into_iter().flatten() {
        let detail = st["detail"].as_str().unwrap_or("");
        let mut lines = detail.lines();
        let first = lines.next().map(|d| format!(": {d}")).unwrap_or_default();
        println!("  {:<10} {}{first}", s(st, "status"), s(st, "name"));
        for l in lines {
            println!("  {:<10}   {l}", "");
        }
    }
}

fn confirm_reprotect(name: &str) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        bail!("re-protect of plan {name} not started: confirm with --yes");
    }
    print!("Re-protect every VM of plan {name}? [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("re-protect of plan {name} not started");
    }
    Ok(())
}

fn operate(cl: &Client, a: &RunArgs, op: &str, body: Value) -> Result<()> {
    let run = cl.post(&format!("/api/plans/{}/{op}", a.name), body)?;
    follow(cl, a, run)
}

fn latest_id(cl: &Client, name: &str) -> Result<i64> {
    let p = cl.get(&format!("/api/plans/{name}"))?;
    p["latest_run"]["id"]
        .as_i64()
        .with_context(|| format!("plan {name} has never run"))
}

fn on_latest(cl: &Client, a: &RunArgs, action: &str) -> Result<()> {
    let id = latest_id(cl, &a.name)?;
    let run = cl.post(
        &format!("/api/plans/{}/runs/{id}/{action}", a.name),
        json!({}),
    )?;
    follow(cl, a, run)
}

fn follow(cl: &Client, a: &RunArgs, run: Value) -> Result<()> {
    let id = run["id"].as_i64().context("the vault's run has no id")?;
    if a.no_wait {
        return cl.print(&run, |r| {
            println!(
                "plan {} run {id} ({}) {}",
                a.name,
                s(r, "operation"),
                s(r, "status")
            )
        });
    }
    watch(cl, &a.name, id)
}

/// Follows run `id` until it is no longer running; a failed run is an error.
fn watch(cl: &Client, name: &str, id: i64) -> Result<()> {
    let mut shown = String::new();
    let run = loop {
        let r = cl.get(&format!("/api/plans/{name}/runs/{id}"))?;
        if cl.format == Format::Table {
            let at = r["steps"]
                .as_array()
                .and_then(|st| st.iter().find(|x| x["status"] == "running"))
                .map(|x| s(x, "name"))
                .unwrap_or_default();
            if !at.is_empty() && at != shown {
                eprintln!("... {at}");
                shown = at;
            }
        }
        if r["status"] != "running" {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    cl.print(&run, |r| {
        println!(
            "plan {name} run {id} ({}): {}",
            s(r, "operation"),
            s(r, "status")
        );
        print_steps(r);
        if r["status"] == "waiting" {
            if let Some(e) = r["error"].as_str() {
                println!("{e}");
            }
        }
    })?;
    if run["status"] == "failed" {
        bail!(
            "plan {name} run {id} ({}) failed: {}",
            s(&run, "operation"),
            s(&run, "error")
        );
    }
    Ok(())
}
