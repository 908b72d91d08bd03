//! The CLI's side of the vault's REST API: `lifeboat region|vm|protect|items|item|failover|
//! change-recovery-point|commit|reprotect|jobs|job`. Every command is one or a few API calls;
//! errors print the vault's message and cause chain; `--output json` prints the API's JSON.
//! Waiting for a job shows its steps and a progress bar (indicatif) until it ends.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};

/// How to reach the vault.
#[derive(Args, Clone)]
pub struct VaultConn {
    /// The vault's URL.
    #[arg(
        long,
        env = "LIFEBOAT_VAULT",
        default_value = "http://127.0.0.1:7480",
        global = true
    )]
    vault: String,
    /// The API token (or `LIFEBOAT_TOKEN`, or `--token-file`).
    #[arg(long, env = "LIFEBOAT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the API token (e.g. `<vault data>/token`).
    #[arg(long, env = "LIFEBOAT_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", global = true)]
    output: Format,
}

impl VaultConn {
    /// `--output json`.
    pub fn is_json(&self) -> bool {
        self.output == Format::Json
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum RegionCmd {
    /// Add a region with its recovery-point store.
    Add {
        name: String,
        #[arg(long)]
        store: String,
    },
    /// List regions.
    List,
}

#[derive(Subcommand)]
pub enum VmCmd {
    /// Create a VM from a JSON definition file (vcpus, memory_mib, disks, nics).
    Create {
        name: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        definition: PathBuf,
    },
    /// List VMs.
    List,
    /// Start a VM where it runs now (its source host, or the target after failover).
    Start { name: String },
    /// Shut a VM down (ACPI power button, then quit).
    Stop { name: String },
}

#[derive(Args)]
pub struct ProtectArgs {
    /// The VM.
    vm: String,
    /// The region to replicate to.
    #[arg(long)]
    target_region: String,
    /// The replication policy.
    #[arg(long, default_value = "default")]
    policy: String,
    /// vCPUs of the VM after failover (default: as defined).
    #[arg(long)]
    target_vcpus: Option<u32>,
    /// Memory of the VM after failover, MiB (default: as defined).
    #[arg(long)]
    target_memory_mib: Option<u64>,
    /// Return at once instead of following the job.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Args)]
pub struct OpArgs {
    /// The VM.
    vm: String,
    /// `latest-processed`, `latest`, `latest-app-consistent`, a point id, or a time.
    #[arg(long)]
    recovery_point: Option<String>,
    /// Failover: shut the source VM down first (best effort).
    #[arg(long)]
    shutdown_source: bool,
    /// With --shutdown-source: seconds the guest gets to power off after the ACPI power
    /// button before QEMU is told to quit (default 30).
    #[arg(long, requires = "shutdown_source")]
    shutdown_timeout: Option<u64>,
    /// Cleanup test failover: the operator's notes on the drill.
    #[arg(long)]
    notes: Option<String>,
    /// Return at once instead of following the job.
    #[arg(long)]
    no_wait: bool,
}

/// `lifeboat reprotect`.
#[derive(clap::Args)]
pub struct ReprotectArgs {
    /// The VM (its failover committed).
    vm: String,
    /// Go ahead without asking (the plan is still shown).
    #[arg(long)]
    yes: bool,
    /// Return at once instead of following the job.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Subcommand)]
pub enum JobCmd {
    /// Follow a job until it ends.
    Watch { id: i64 },
}

pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    pub(crate) format: Format,
    rt: tokio::runtime::Runtime,
}

impl Client {
    pub(crate) fn new(c: &VaultConn) -> Result<Self> {
        let token = match (&c.token, &c.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("reading the API token {}", f.display()))?
                .trim()
                .to_string(),
            (None, None) => bail!(
                "no API token: pass --token, --token-file (the vault writes <data>/token) or set \
                 LIFEBOAT_TOKEN"
            ),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .context("building the HTTP client")?,
            base: c.vault.trim_end_matches('/').to_string(),
            token,
            format: c.output,
            rt,
        })
    }

    pub(crate) fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let mut r = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token);
            if let Some(b) = body {
                r = r.json(&b);
            }
            let resp = r
                .send()
                .await
                .with_context(|| format!("reaching the vault at {} (is it running?)", self.base))?;
            let status = resp.status();
            let text = resp.text().await.context("reading the vault's answer")?;
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            if !status.is_success() {
                let causes = v["causes"]
                    .as_array()
                    .map(|c| {
                        c.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(": ")
                    })
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| v.to_string());
                bail!("{method} {path}: the vault answered {status}: {causes}");
            }
            Ok(v)
        })
    }

    pub(crate) fn get(&self, path: &str) -> Result<Value> {
        self.call(reqwest::Method::GET, path, None)
    }

    pub(crate) fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    pub(crate) fn print(&self, v: &Value, table: impl FnOnce(&Value)) -> Result<()> {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
            Format::Table => table(v),
        }
        Ok(())
    }

    /// Follows job `id` until it ends: steps and a progress bar (table output), or the final
    /// job (json). A failed job is an error carrying its message.
    pub(crate) fn watch(&self, id: i64) -> Result<Value> {
        let bar = (self.format == Format::Table).then(|| {
            let b = indicatif::ProgressBar::new(100);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos:>3}% {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b
        });
        let job = loop {
            let j = self.get(&format!("/api/jobs/{id}"))?;
            if let Some(b) = &bar {
                b.set_position(j["progress"].as_u64().unwrap_or(0));
                let running = j["steps"]
                    .as_array()
                    .and_then(|s| {
                        s.iter()
                            .find(|s| s["status"] != "succeeded" && s["status"] != "skipped")
                    })
                    .and_then(|s| s["name"].as_str())
                    .unwrap_or("")
                    .to_string();
                b.set_message(format!(
                    "{} {}: {running}",
                    j["operation"].as_str().unwrap_or(""),
                    j["vm"].as_str().unwrap_or("")
                ));
            }
            if j["status"] != "running" {
                break j;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        if let Some(b) = bar {
            b.finish_and_clear();
            for s in job["steps"].as_array().into_iter().flatten() {
                println!(
                    "  {:<10} {}{}",
                    s["status"].as_str().unwrap_or(""),
                    s["name"].as_str().unwrap_or(""),
                    s["detail"]
                        .as_str()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
            }
        } else {
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        if job["status"] == "failed" {
            bail!(
                "job {id} ({} of VM {}) failed: {}",
                job["operation"].as_str().unwrap_or("?"),
                job["vm"].as_str().unwrap_or("?"),
                job["error"].as_str().unwrap_or("no reason given")
            );
        }
        if self.format == Format::Table {
            println!("job {id} succeeded");
        }
        Ok(job)
    }
}

pub(crate) fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(x) => x.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

pub fn region(c: &VaultConn, cmd: RegionCmd) -> Result<()> {
    let cl = Client::new(c)?;
    match cmd {
        RegionCmd::Add { name, store } => {
            let v = cl.post("/api/regions", json!({"name": name, "store_url": store}))?;
            cl.print(&v, |v| {
                println!("region {} ({})", s(v, "name"), s(v, "store_url"))
            })
        }
        RegionCmd::List => {
            let v = cl.get("/api/regions")?;
            cl.print(&v, |v| {
                println!("{:<16} STORE", "REGION");
                for r in v.as_array().into_iter().flatten() {
                    println!("{:<16} {}", s(r, "name"), s(r, "store_url"));
                }
            })
        }
    }
}

pub fn vm(c: &VaultConn, cmd: VmCmd) -> Result<()> {
    let cl = Client::new(c)?;
    match cmd {
        VmCmd::Create {
            name,
            region,
            definition,
        } => {
            let text = std::fs::read_to_string(&definition)
                .with_context(|| format!("reading {}", definition.display()))?;
            let def: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", definition.display()))?;
            let v = cl.post(
                "/api/vms",
                json!({"name": name, "region": region, "definition": def}),
            )?;
            cl.print(&v, |v| {
                println!("VM {} created in {}", s(v, "name"), s(v, "region"))
            })
        }
        VmCmd::List => {
            let v = cl.get("/api/vms")?;
            cl.print(&v, |v| {
                println!("{:<20} REGION", "VM");
                for r in v.as_array().into_iter().flatten() {
                    println!("{:<20} {}", s(r, "name"), s(r, "region"));
                }
            })
        }
        VmCmd::Start { name } => {
            let v = cl.post(&format!("/api/vms/{name}/start"), json!({}))?;
            cl.print(&v, |v| {
                println!("VM {name} running; serial console {}", s(v, "serial_log"))
            })
        }
        VmCmd::Stop { name } => {
            let v = cl.post(&format!("/api/vms/{name}/stop"), json!({}))?;
            cl.print(&v, |_| println!("VM {name} stopped"))
        }
    }
}

pub fn protect(c: &VaultConn, a: ProtectArgs) -> Result<()> {
    let cl = Client::new(c)?;
    let job = cl.post(
        "/api/items",
        json!({"vm": a.vm, "policy": a.policy, "target_region": a.target_region,
               "target_vcpus": a.target_vcpus, "target_memory_mib": a.target_memory_mib}),
    )?;
    finish_op(&cl, job, a.no_wait)
}

fn finish_op(cl: &Client, job: Value, no_wait: bool) -> Result<()> {
    let id = job["id"].as_i64().context("the vault's job has no id")?;
    if no_wait {
        return cl.print(&job, |j| {
            println!("job {} started ({})", id, s(j, "operation"))
        });
    }
    cl.watch(id).map(|_| ())
}

/// failover, change-recovery-point, commit, reprotect, disable-protection, test-failover...
pub fn operate(c: &VaultConn, op: &str, a: OpArgs) -> Result<()> {
    let cl = Client::new(c)?;
    let mut body = json!({});
    if let Some(p) = &a.recovery_point {
        body["recovery_point"] = json!(p);
    }
    if a.shutdown_source {
        body["shutdown_source"] = json!(true);
    }
    if let Some(t) = a.shutdown_timeout {
        body["shutdown_timeout_secs"] = json!(t);
    }
    if let Some(n) = &a.notes {
        body["notes"] = json!(n);
    }
    let job = cl.post(&format!("/api/items/{}/{op}", a.vm), body)?;
    finish_op(&cl, job, a.no_wait)
}

/// Re-protect: shows the plan (direction, what is created "(new)", what is reused), asks
/// unless `--yes`, then runs the job.
pub fn reprotect(c: &VaultConn, a: ReprotectArgs) -> Result<()> {
    let cl = Client::new(c)?;
    let plan = cl.get(&format!("/api/items/{}/reprotect-plan", a.vm))?;
    let list = |k: &str| -> Vec<String> {
        plan[k]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    };
    // The plan goes to stderr with JSON output, so that stdout stays one JSON document.
    let show = |line: String| {
        if cl.format == Format::Json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    show(format!("Re-protect VM {}: {}", a.vm, s(&plan, "direction")));
    for r in list("create") {
        show(format!("  create: {r}"));
    }
    for r in list("reuse") {
        show(format!("  reuse:  {r}"));
    }
    show(format!("  sends:  {}", s(&plan, "sync")));
    if !a.yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("re-protect of VM {} not started: confirm with --yes", a.vm);
        }
        print!("Re-protect? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            anyhow::bail!("re-protect of VM {} not started", a.vm);
        }
    }
    let job = cl.post(&format!("/api/items/{}/reprotect", a.vm), json!({}))?;
    finish_op(&cl, job, a.no_wait)
}

pub fn hosts(c: &VaultConn) -> Result<()> {
    let cl = Client::new(c)?;
    let v = cl.get("/api/hosts")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    cl.print(&v, |v| {
        println!(
            "{:<20} {:<12} {:<28} LAST SEEN",
            "HOST", "REGION", "AGENT URL"
        );
        for h in v.as_array().into_iter().flatten() {
            let ago = now - h["last_seen"].as_i64().unwrap_or(0);
            println!(
                "{:<20} {:<12} {:<28} {:.0}s ago",
                s(h, "name"),
                s(h, "region"),
                s(h, "url"),
                ago as f64 / 1000.0
            );
        }
    })
}

/// A time in ms since 1970 as UTC text.
fn utc(ms: &Value) -> String {
    match ms.as_i64().and_then(|m| u64::try_from(m).ok()) {
        Some(m) => {
            lifeboat_process::format_utc_ms(std::time::UNIX_EPOCH + Duration::from_millis(m))
        }
        None => "-".to_string(),
    }
}

/// An item's RPO for people (`0.8s`, `3m12s`, `-` when unknown).
fn rpo(item: &Value) -> String {
    match item["rpo_ms"].as_i64() {
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        None => "-".to_string(),
    }
}

pub fn items(c: &VaultConn) -> Result<()> {
    let cl = Client::new(c)?;
    let mut v = cl.get("/api/items")?;
    for i in v.as_array_mut().into_iter().flatten() {
        let vm = s(i, "vm");
        i["health"] = cl.get(&format!("/api/items/{vm}/health"))?;
    }
    cl.print(&v, |v| {
        println!(
            "{:<20} {:<30} {:<9} {:<8} {:<9} {:<12} ACTIVE REGION",
            "VM", "STATE", "HEALTH", "SYNCED", "RPO", "POLICY"
        );
        for i in v.as_array().into_iter().flatten() {
            println!(
                "{:<20} {:<30} {:<9} {:>5}%   {:<9} {:<12} {}",
                s(i, "vm"),
                s(i, "state_label"),
                s(&i["health"], "health"),
                s(i, "percent_synced"),
                rpo(i),
                s(i, "policy"),
                s(i, "active_region")
            );
        }
    })
}

pub fn item_points(c: &VaultConn, vm: &str) -> Result<()> {
    let cl = Client::new(c)?;
    let v = cl.get(&format!("/api/items/{vm}/points"))?;
    cl.print(&v, |v| {
        println!(
            "{:<28} {:<15} {:<17} {:<13} DISKS",
            "POINT", "TIME (UTC)", "KIND", "FORM"
        );
        for p in v.as_array().into_iter().flatten() {
            println!(
                "{:<28} {:<15} {:<17} {:<13} {}",
                s(p, "id"),
                utc(&p["time"]),
                s(p, "kind"),
                s(p, "form"),
                s(p, "disks")
            );
        }
    })
}

pub fn item_show(c: &VaultConn, vm: &str) -> Result<()> {
    let cl = Client::new(c)?;
    let mut v = cl.get(&format!("/api/items/{vm}"))?;
    v["health"] = cl.get(&format!("/api/items/{vm}/health"))?;
    cl.print(&v, |i| {
        println!("VM:                 {}", s(i, "vm"));
        let h = &i["health"];
        println!("Health:             {}", s(h, "health"));
        for r in h["reasons"].as_array().into_iter().flatten() {
            println!("  - {}", r.as_str().unwrap_or(""));
        }
        for (label, key) in [
            ("Latest crash point:", "latest_crash_consistent"),
            ("Latest app point:  ", "latest_app_consistent"),
        ] {
            if h[key].is_object() {
                println!("{label} {} ({})", s(&h[key], "id"), s(&h[key], "form"));
            }
        }
        println!("State:              {}", s(i, "state_label"));
        println!(
            "Replication:        {} -> {} (epoch {})",
            s(i, "source_region"),
            s(i, "target_region"),
            s(i, "epoch")
        );
        println!("Active region:      {}", s(i, "active_region"));
        if !i["target_vcpus"].is_null() || !i["target_memory_mib"].is_null() {
            println!(
                "Target size:        {} vCPUs, {} MiB (after failover)",
                s(i, "target_vcpus"),
                s(i, "target_memory_mib")
            );
        }
        println!("Policy:             {}", s(i, "policy"));
        println!("Synchronized:       {}%", s(i, "percent_synced"));
        println!("RPO:                {}", rpo(i));
        if let Some(h) = i["hydrated_percent"].as_i64() {
            println!("Disks local:        {h}% (hydration at the target)");
        }
        if i["drill"].is_object() {
            let d = &i["drill"];
            println!(
                "DR drill:           {} from point {} at host {} since {} (cleanup pending)",
                if d["succeeded"] == true {
                    "running"
                } else {
                    "failed"
                },
                s(d, "point"),
                s(d, "host"),
                utc(&d["started_at"])
            );
        }
        match i["last_drill_at"].as_i64() {
            Some(_) => println!(
                "Last drill:         {}{}",
                utc(&i["last_drill_at"]),
                i["last_drill_notes"]
                    .as_str()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default()
            ),
            None => println!("Last drill:         never (run `lifeboat test-failover`)"),
        }
        let ops: Vec<String> = i["allowed_operations"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str().map(str::to_string))
            .collect();
        println!(
            "Allowed operations: {}",
            if ops.is_empty() {
                "none".into()
            } else {
                ops.join(", ")
            }
        );
        if !i["job"].is_null() {
            println!("Running job:        {}", s(i, "job"));
        }
    })
}

pub fn jobs(c: &VaultConn) -> Result<()> {
    let cl = Client::new(c)?;
    let v = cl.get("/api/jobs")?;
    cl.print(&v, |v| {
        println!(
            "{:<6} {:<24} {:<20} {:<10} PROGRESS",
            "JOB", "OPERATION", "VM", "STATUS"
        );
        for j in v.as_array().into_iter().flatten() {
            println!(
                "{:<6} {:<24} {:<20} {:<10} {}%",
                s(j, "id"),
                s(j, "operation"),
                s(j, "vm"),
                s(j, "status"),
                s(j, "progress")
            );
        }
    })
}

/// Events (oldest first): warnings such as a fenced host coming back, job results.
pub fn events(c: &VaultConn) -> Result<()> {
    let cl = Client::new(c)?;
    let v = cl.get("/api/events?limit=10000")?;
    cl.print(&v, |v| {
        for e in v.as_array().into_iter().flatten() {
            println!(
                "{} {:<8} {:<16} {}",
                utc(&e["at"]),
                s(e, "level"),
                s(e, "vm"),
                s(e, "message")
            );
        }
    })
}

pub fn job(c: &VaultConn, cmd: JobCmd) -> Result<()> {
    let cl = Client::new(c)?;
    match cmd {
        JobCmd::Watch { id } => cl.watch(id).map(|_| ()),
    }
}
