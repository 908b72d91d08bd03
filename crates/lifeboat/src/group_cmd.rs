//! `lifeboat group ...`: replication groups (multi-VM consistency) through the vault's API.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{s, Client, Format, VaultConn};

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a replication group of protected VMs (up to 16; same regions and policy).
    Create {
        /// The group's name.
        name: String,
        /// Its VMs.
        #[arg(required = true)]
        vms: Vec<String>,
    },
    /// Every replication group.
    List,
    /// One group: its VMs and newest cut.
    Show { name: String },
    /// The group's shared points (cuts) and each VM's recovery point of them.
    Points { name: String },
    /// Cut a shared point across the group now.
    Cut {
        name: String,
        /// Freeze the guests' filesystems first (QEMU guest agent).
        #[arg(long)]
        app_consistent: bool,
    },
    /// Delete the group (its VMs stay protected and cut their own points again).
    Delete { name: String },
    /// Fail the whole group over to one shared point.
    Failover(GroupOpArgs),
    /// A DR drill of the whole group from one shared point.
    TestFailover(GroupOpArgs),
    /// End the group's drill (`--notes`).
    CleanupTestFailover(GroupOpArgs),
    /// Commit the failover of every VM of the group.
    Commit(GroupOpArgs),
    /// Re-protect every VM of the group.
    Reprotect(GroupOpArgs),
}

#[derive(clap::Args)]
pub struct GroupOpArgs {
    /// The group.
    name: String,
    /// `latest-multi-vm-processed` (default), `latest-multi-vm-app-consistent` or `cut-<id>`.
    #[arg(long)]
    recovery_point: Option<String>,
    /// Failover: shut the source VMs down first (best effort).
    #[arg(long)]
    shutdown_source: bool,
    /// Cleanup test failover: the operator's notes on the drill.
    #[arg(long)]
    notes: Option<String>,
    /// Return at once instead of following the jobs.
    #[arg(long)]
    no_wait: bool,
}

fn print_cut(c: &Value) {
    let members: Vec<String> = c["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| format!("{}@{}", s(m, "vm"), s(m, "seq")))
        .collect();
    println!(
        "cut-{:<6} {}  {:<16} {}",
        s(c, "id"),
        s(c, "time_utc"),
        s(c, "kind"),
        members.join(" ")
    );
}

pub fn run(c: &VaultConn, cmd: GroupCmd) -> Result<()> {
    let cl = Client::new(c)?;
    match cmd {
        GroupCmd::Create { name, vms } => {
            let g = cl.post("/api/groups", json!({"name": name, "vms": vms}))?;
            cl.print(&g, |g| {
                println!(
                    "replication group {} created: {}",
                    s(g, "name"),
                    vms.join(", ")
                );
                for w in g["warnings"].as_array().into_iter().flatten() {
                    println!("warning: {}", w.as_str().unwrap_or(""));
                }
            })
        }
        GroupCmd::List => {
            let gs = cl.get("/api/groups")?;
            cl.print(&gs, |gs| {
                println!("{:<20} {:>5} {:>6}  VMS", "GROUP", "CUTS", "NEWEST");
                for g in gs.as_array().into_iter().flatten() {
                    let vms: Vec<&str> = g["vms"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!(
                        "{:<20} {:>5} {:>6}  {}",
                        s(g, "name"),
                        s(g, "cuts"),
                        g["last_cut"]["time_utc"].as_str().unwrap_or("-"),
                        vms.join(", ")
                    );
                }
            })
        }
        GroupCmd::Show { name } => {
            let g = cl.get(&format!("/api/groups/{name}"))?;
            cl.print(&g, |g| {
                println!("replication group {}", s(g, "name"));
                for vm in g["vms"].as_array().into_iter().flatten() {
                    println!("  VM {}", vm.as_str().unwrap_or(""));
                }
                println!("  {} cuts", s(g, "cuts"));
                if !g["last_cut"].is_null() {
                    print!("  newest: ");
                    print_cut(&g["last_cut"]);
                }
            })
        }
        GroupCmd::Points { name } => {
            let ps = cl.get(&format!("/api/groups/{name}/points"))?;
            cl.print(&ps, |ps| {
                for p in ps.as_array().into_iter().flatten() {
                    let mark = if p["complete"] == true { "*" } else { " " };
                    print!("{mark} ");
                    print_cut(&p["cut"]);
                }
                println!("(* every VM has its point: the group can fail over to it)");
            })
        }
        GroupCmd::Cut {
            name,
            app_consistent,
        } => {
            let kind = if app_consistent {
                "app-consistent"
            } else {
                "crash-consistent"
            };
            let c = cl.post(&format!("/api/groups/{name}/cut"), json!({"kind": kind}))?;
            cl.print(&c, print_cut)
        }
        GroupCmd::Delete { name } => {
            cl.call(
                reqwest::Method::DELETE,
                &format!("/api/groups/{name}"),
                None,
            )?;
            cl.print(&json!({}), |_| println!("replication group {name} deleted"))
        }
        GroupCmd::Failover(a) => operate(&cl, "failover", a),
        GroupCmd::TestFailover(a) => operate(&cl, "test-failover", a),
        GroupCmd::CleanupTestFailover(a) => operate(&cl, "cleanup-test-failover", a),
        GroupCmd::Commit(a) => operate(&cl, "commit", a),
        GroupCmd::Reprotect(a) => operate(&cl, "reprotect", a),
    }
}

/// Starts the group operation and follows every member's job; fails if any failed.
fn operate(cl: &Client, op: &str, a: GroupOpArgs) -> Result<()> {
    let mut body = json!({});
    if let Some(p) = &a.recovery_point {
        body["recovery_point"] = json!(p);
    }
    if a.shutdown_source {
        body["shutdown_source"] = json!(true);
    }
    if let Some(n) = &a.notes {
        body["notes"] = json!(n);
    }
    let jobs = cl.post(&format!("/api/groups/{}/{op}", a.name), body)?;
    let ids: Vec<i64> = jobs
        .as_array()
        .context("the vault's answer is not a list of jobs")?
        .iter()
        .filter_map(|j| j["id"].as_i64())
        .collect();
    if a.no_wait {
        return cl.print(&jobs, |_| {
            println!("{op} of group {} started: jobs {ids:?}", a.name)
        });
    }
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for id in ids {
        match cl.watch(id) {
            Ok(j) => done.push(j),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if cl.format == Format::Table {
        println!("{op} of group {}: {} jobs succeeded", a.name, done.len());
    }
    if !failed.is_empty() {
        bail!("{op} of group {}: {}", a.name, failed.join("; "));
    }
    Ok(())
}

/// `lifeboat checkpoint VM [--app-consistent]`.
pub fn checkpoint(c: &VaultConn, vm: &str, app_consistent: bool) -> Result<()> {
    let cl = Client::new(c)?;
    let kind = if app_consistent {
        "app-consistent"
    } else {
        "crash-consistent"
    };
    let a = cl.post(
        &format!("/api/items/{vm}/checkpoint"),
        json!({"kind": kind}),
    )?;
    cl.print(&a, |a| {
        println!(
            "VM {}: {} marker at journal record {}",
            s(a, "vm"),
            s(a, "kind"),
            s(a, "seq")
        );
        if let Some(e) = a["freeze_error"].as_str() {
            println!("the guest could not be frozen: {e}");
        }
    })
}
