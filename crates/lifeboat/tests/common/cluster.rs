//! A Lifeboat installation on loopback for end-to-end tests: either `lifeboat up` (one
//! process), or `lifeboat vault` plus one `lifeboat agent` per region as separate processes (so
//! a test can kill one of them). Same layout as `lifeboat up`: `<dir>/vault`,
//! `<dir>/regions/<r>/store`, `<dir>/agents/<r>`. The CLI is run as a real process too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lifeboat_qemu::seqwriter::{self, GuestParams};
use lifeboat_testkit::{free_loopback_port, require_tool, run_ok, wait_until, Procs};
use serde_json::Value;

use super::LIFEBOAT;

pub const REGIONS: [&str; 2] = ["primary", "secondary"];

pub struct Cluster {
    pub procs: Procs,
    pub dir: PathBuf,
    pub port: u16,
    vault: Option<usize>,
    agents: Vec<(String, usize)>,
    up: Option<usize>,
}

fn log(dir: &Path, name: &str) -> std::fs::File {
    let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    std::fs::File::create(dir.join(format!("{name}-{n}.log"))).expect("log file")
}

impl Cluster {
    /// `lifeboat up` in `dir` (TCG: the test guest is tiny real-mode code).
    pub fn up(dir: &Path) -> Cluster {
        let port = free_loopback_port();
        let mut procs = Procs::new();
        let mut c = Command::new(LIFEBOAT);
        c.args([
            "up",
            "--accel",
            "tcg",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--data")
        .arg(dir)
        .env("LIFEBOAT_LOG", "info,lifeboat_nbd=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log(dir.parent().unwrap_or(dir), "up"));
        let i = procs.spawn(c);
        let cl = Cluster {
            procs,
            dir: dir.to_path_buf(),
            port,
            vault: None,
            agents: Vec::new(),
            up: Some(i),
        };
        cl.wait_agents();
        cl
    }

    /// `lifeboat vault` and one `lifeboat agent` per region, separate processes.
    pub fn separate(dir: &Path) -> Cluster {
        let port = free_loopback_port();
        let mut cl = Cluster {
            procs: Procs::new(),
            dir: dir.to_path_buf(),
            port,
            vault: None,
            agents: Vec::new(),
            up: None,
        };
        cl.start_vault();
        for r in REGIONS {
            let store = cl.store(r);
            std::fs::create_dir_all(&store).expect("store dir");
            cl.cli_ok(&["region", "add", r, "--store", &store.display().to_string()]);
            cl.start_agent(r);
        }
        cl.wait_agents();
        cl
    }

    fn logs(&self) -> PathBuf {
        self.dir.parent().unwrap_or(&self.dir).to_path_buf()
    }

    pub fn start_vault(&mut self) {
        let mut c = Command::new(LIFEBOAT);
        c.args(["vault", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data")
            .arg(self.dir.join("vault"))
            .env("LIFEBOAT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log(&self.logs(), "vault"));
        self.vault = Some(self.procs.spawn(c));
        lifeboat_testkit::wait_for_port(self.port, Duration::from_secs(30));
    }

    pub fn kill_vault(&mut self) {
        if let Some(i) = self.vault.take() {
            self.procs.kill9(i);
        }
    }

    pub fn start_agent(&mut self, region: &str) {
        let mut c = Command::new(LIFEBOAT);
        c.args([
            "agent",
            "--accel",
            "tcg",
            "--name",
            &format!("{region}-host"),
        ])
        .args(["--region", region, "--vault", &self.url()])
        .arg("--token-file")
        .arg(self.token_file())
        .arg("--data")
        .arg(self.dir.join("agents").join(region))
        .env("LIFEBOAT_LOG", "info,lifeboat_nbd=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log(&self.logs(), &format!("agent-{region}")));
        let i = self.procs.spawn(c);
        self.agents.retain(|(r, _)| r != region);
        self.agents.push((region.to_string(), i));
    }

    pub fn kill_agent(&mut self, region: &str) {
        if let Some(p) = self.agents.iter().position(|(r, _)| r == region) {
            let (_, i) = self.agents.remove(p);
            self.procs.kill9(i);
        }
    }

    /// Waits until both regions' agents have registered.
    pub fn wait_agents(&self) {
        wait_until(Duration::from_secs(60), "both agents registered", || {
            let token = self.token_file();
            if !token.exists() {
                return false;
            }
            let out = self.cli(&["region", "list"]);
            if !out.status.success() {
                return false;
            }
            let hosts = self.json(&["hosts"]);
            REGIONS.iter().all(|r| {
                hosts
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|h| h["region"] == *r)
            })
        });
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join("vault").join("token")
    }

    pub fn store(&self, region: &str) -> PathBuf {
        self.dir.join("regions").join(region).join("store")
    }

    /// The serial log of `vm` as a source VM in `region`.
    pub fn source_serial(&self, region: &str, vm: &str) -> PathBuf {
        self.dir
            .join("agents")
            .join(region)
            .join("vms")
            .join(vm)
            .join("serial.log")
    }

    /// The serial log of `vm` recovered in `region`.
    pub fn recovered_serial(&self, region: &str, vm: &str) -> PathBuf {
        self.dir
            .join("agents")
            .join(region)
            .join("recovered")
            .join(vm)
            .join("serial.log")
    }

    /// A `lifeboat` command talking to this vault.
    pub fn command(&self) -> Command {
        let mut c = Command::new(LIFEBOAT);
        c.env("LIFEBOAT_VAULT", self.url())
            .env("LIFEBOAT_TOKEN_FILE", self.token_file())
            .env_remove("LIFEBOAT_TOKEN")
            .stdin(Stdio::null());
        c
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run lifeboat")
    }

    /// Runs the CLI; panics with its output unless it succeeds; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "lifeboat {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI, which must fail; returns stderr.
    pub fn cli_err(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "lifeboat {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// JSON of a CLI command (`--output json`).
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["--output", "json"]);
        let out = self.cli_ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// The item of `vm` with its health (`lifeboat item show --output json`).
    pub fn item(&self, vm: &str) -> Value {
        self.json(&["item", "show", vm])
    }

    /// Creates VM `name` in the primary region: the seqwriter guest on a 64 MiB raw disk
    /// (every write printed, throttled to ~290 writes/s so TCG and the journal keep up).
    pub fn create_guest_vm(&self, name: &str) -> PathBuf {
        self.create_guest_vm_as(name, "raw")
    }

    /// [`Cluster::create_guest_vm`] with the disk as a `format` (`raw` or `qcow2`) image.
    pub fn create_guest_vm_as(&self, name: &str, format: &str) -> PathBuf {
        require_tool("as");
        require_tool("ld");
        let gdir = self.dir.join("guest");
        std::fs::create_dir_all(&gdir).expect("guest dir");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        run_ok(
            Command::new("bash")
                .arg(root.join("guest/build.sh"))
                .arg(&gdir),
        );
        let code = std::fs::read(gdir.join("seqwriter.bin")).expect("seqwriter.bin");
        let image = gdir.join(format!("{name}.img"));
        let params = GuestParams {
            ring_blocks: 256,
            writes_per_tick: 16,
            print_every: 1,
        };
        seqwriter::write_image(&image, &code, params, 64 << 20).expect("guest image");
        let image = if format == "qcow2" {
            let q = gdir.join(format!("{name}.qcow2"));
            run_ok(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&image)
                    .arg(&q),
            );
            std::fs::remove_file(&image).expect("remove the raw image");
            q
        } else {
            image
        };
        let def = serde_json::json!({
            "name": name, "vcpus": 1, "memory_mib": 32,
            "disks": [{"source": {"file": {"path": image, "format": format}}}],
            "serial_log": gdir.join(format!("{name}.unused.serial")),
        });
        let def_file = gdir.join(format!("{name}.json"));
        std::fs::write(&def_file, def.to_string()).expect("definition");
        self.cli_ok(&[
            "vm",
            "create",
            name,
            "--region",
            "primary",
            "--definition",
            &def_file.display().to_string(),
        ]);
        image
    }
}

/// The step named `name` of job JSON `job`.
pub fn step<'a>(job: &'a Value, name: &str) -> &'a Value {
    job["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("job has no step {name}: {job}"))
}

/// The serial log's text ("" when missing).
pub fn serial(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .replace('\r', "")
}

/// Waits until the guest logging to `path` has printed `seq N` with N >= `n`; returns N.
pub fn wait_seq(path: &Path, n: u64, timeout: Duration) -> u64 {
    let mut last = 0;
    wait_until(
        timeout,
        &format!("the guest at {} reaching seq {n}", path.display()),
        || {
            last = seqwriter::last_reported_seq(&serial(path)).unwrap_or(0);
            last >= n
        },
    );
    last
}

/// Waits until the guest logging to `path` has booted `boot` times; returns the write it
/// resumed after.
pub fn wait_boot(path: &Path, boot: u32, timeout: Duration) -> u64 {
    let mut after = 0;
    wait_until(
        timeout,
        &format!("boot {boot} in {}", path.display()),
        || match seqwriter::boots(&serial(path))
            .into_iter()
            .find(|(b, _)| *b == boot)
        {
            Some((_, m)) => {
                after = m;
                true
            }
            None => false,
        },
    );
    after
}
