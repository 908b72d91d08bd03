//! Starting, watching and stopping one QEMU process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmdline::{qemu_args, AccelKind};
use crate::definition::{check_socket_path, DefinitionError, VmDefinition};
use crate::qmp::{QmpClient, QmpError, QmpEvent};
use crate::serial::SerialLog;

/// How long `quit` may take before the driver resorts to SIGKILL.
pub const QUIT_GRACE: Duration = Duration::from_secs(10);
/// How long a SIGKILLed QEMU may take to be gone.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// Bytes of QEMU's stderr quoted in errors.
const STDERR_TAIL: usize = 4000;

/// Which accelerator to ask for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` opens read-write, else TCG.
    #[default]
    Auto,
    /// KVM, or an error if `/dev/kvm` cannot be used.
    Kvm,
    /// TCG (emulation), even where KVM works.
    Tcg,
}

/// Host-side choices for one start.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// A directory for this VM's runtime files: `qmp.sock` and `qemu.stderr` (created if
    /// missing; keep its path short: unix socket paths have at most 107 bytes).
    pub run_dir: PathBuf,
    /// The QEMU binary (default `qemu-system-x86_64`, found on `PATH`).
    pub qemu_binary: PathBuf,
    /// KVM, TCG or whichever works.
    pub accel: Accel,
    /// How long QEMU may take to open its QMP socket (default 30 s).
    pub start_timeout: Duration,
    /// Timeout of each QMP command (default 30 s).
    pub command_timeout: Duration,
    /// [`start`] only: QEMU gets SIGKILL when the thread that started it exits (Linux
    /// `PR_SET_PDEATHSIG`), so an agent killed with -9 leaves no VM behind writing to disks
    /// nobody serves (default off).
    pub die_with_parent: bool,
}

impl StartOptions {
    /// Defaults, with runtime files in `run_dir`.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        StartOptions {
            run_dir: run_dir.into(),
            qemu_binary: "qemu-system-x86_64".into(),
            accel: Accel::Auto,
            start_timeout: Duration::from_secs(30),
            command_timeout: crate::qmp::DEFAULT_TIMEOUT,
            die_with_parent: false,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It is gone, but its status was collected elsewhere.
    Unknown,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "exit code {c}"),
            ExitInfo::Signal(s) => write!(f, "killed by signal {s}"),
            ExitInfo::Unknown => f.write_str("exited (status unknown)"),
        }
    }
}

/// A failure of the driver, naming the VM.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The definition is not usable.
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// A host path the VM needs is missing or unusable.
    #[error("VM {vm}: {what} {path}: {problem}")]
    HostPath {
        /// The VM.
        vm: String,
        /// Which path (`serial_log directory`, `run_dir`, ...).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// What is wrong and what to do.
        problem: String,
    },
    /// KVM was asked for but `/dev/kvm` cannot be opened read-write.
    #[error("VM {vm}: KVM requested but /dev/kvm cannot be opened read-write (load kvm_intel/kvm_amd, join the kvm group, or use TCG)")]
    KvmUnavailable {
        /// The VM.
        vm: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("VM {vm}: cannot start {binary} (apt-get install qemu-system-x86)")]
    Spawn {
        /// The VM.
        vm: String,
        /// The binary.
        binary: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU exited while it was being started.
    #[error("VM {vm}: QEMU exited during start ({status}); its stderr:\n{stderr}")]
    StartExited {
        /// The VM.
        vm: String,
        /// How it ended.
        status: ExitInfo,
        /// The end of QEMU's stderr (says why).
        stderr: String,
    },
    /// QEMU did not open its QMP socket in time.
    #[error("VM {vm}: QEMU did not open its QMP socket {socket} within {after:?}; its stderr:\n{stderr}")]
    StartTimeout {
        /// The VM.
        vm: String,
        /// The socket.
        socket: PathBuf,
        /// The timeout.
        after: Duration,
        /// The end of QEMU's stderr.
        stderr: String,
    },
    /// A QMP command failed.
    #[error("VM {vm}")]
    Qmp {
        /// The VM.
        vm: String,
        /// Why (boxed: QMP errors are large).
        #[source]
        source: Box<QmpError>,
    },
    /// Waiting for or signalling the QEMU process failed.
    #[error("VM {vm}: QEMU process {pid}: {what}")]
    Process {
        /// The VM.
        vm: String,
        /// QEMU's pid.
        pid: u32,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU was SIGKILLed and is still there.
    #[error(
        "VM {vm}: QEMU process {pid} is still there {after:?} after SIGKILL (stuck in the kernel?)"
    )]
    Unkillable {
        /// The VM.
        vm: String,
        /// QEMU's pid.
        pid: u32,
        /// How long the driver waited.
        after: Duration,
    },
    /// The pattern did not appear in time, or QEMU exited first.
    #[error("VM {vm}: {pattern:?} did not appear on the serial console {path} within {after:?}: {detail}")]
    SerialTimeout {
        /// The VM.
        vm: String,
        /// What was awaited.
        pattern: String,
        /// The serial log.
        path: PathBuf,
        /// How long the driver waited.
        after: Duration,
        /// Whether QEMU still runs (or how it ended, with its stderr), and the log's last lines.
        detail: String,
    },
}

/// How [`RunningVm::shutdown`] stopped the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownOutcome {
    /// QEMU had already exited.
    AlreadyExited,
    /// The guest powered off after the ACPI power button (a clean guest shutdown).
    PoweredOff,
    /// The guest ignored the power button; QMP `quit` stopped QEMU.
    Quit,
    /// Neither worked; SIGKILL did.
    Killed,
}

/// What [`RunningVm::shutdown`] did.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// Which step stopped the VM.
    pub outcome: ShutdownOutcome,
    /// How QEMU ended.
    pub exit: ExitInfo,
    /// From the call to QEMU's exit.
    pub elapsed: Duration,
    /// What failed on the way (a QMP error, a step that timed out).
    pub notes: Vec<String>,
}

impl std::fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.outcome {
            ShutdownOutcome::AlreadyExited => "had already exited",
            ShutdownOutcome::PoweredOff => "powered off (ACPI)",
            ShutdownOutcome::Quit => {
                "stopped by QMP quit (the guest ignored the ACPI power button)"
            }
            ShutdownOutcome::Killed => "killed with SIGKILL",
        };
        write!(f, "{how} after {:?}, {}", self.elapsed, self.exit)?;
        for n in &self.notes {
            write!(f, "; {n}")?;
        }
        Ok(())
    }
}

/// A VM's state as the driver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmStatus {
    /// QEMU runs; QMP `query-status` says this (`running`, `paused`, ...).
    Alive {
        /// Whether the vCPUs run.
        running: bool,
        /// QEMU's run state.
        state: String,
    },
    /// QEMU exited.
    Exited(ExitInfo),
}

/// The QEMU process: spawned and owned by the driver, or spawned by the caller (who reaps it).
enum Proc {
    Owned(Child),
    External(u32),
}

impl Proc {
    fn pid(&self) -> u32 {
        match self {
            Proc::Owned(c) => c.id(),
            Proc::External(pid) => *pid,
        }
    }

    /// The exit status if the process has exited (without reaping a caller-owned child).
    fn try_exit(&mut self) -> std::io::Result<Option<ExitInfo>> {
        match self {
            Proc::Owned(c) => Ok(c.try_wait()?.map(|st| {
                use std::os::unix::process::ExitStatusExt;
                match (st.code(), st.signal()) {
                    (Some(c), _) => ExitInfo::Code(c),
                    (None, Some(s)) => ExitInfo::Signal(s),
                    _ => ExitInfo::Unknown,
                }
            })),
            Proc::External(pid) => peek_exit(*pid),
        }
    }

    fn kill(&self) -> std::io::Result<()> {
        // SAFETY: kill(2) on QEMU's pid; no memory is touched. The pid cannot have been reused:
        // it is our child and nobody reaped it while we still hold it (WNOWAIT below), or we own
        // the Child.
        if unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGKILL) } == -1 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Whether child `pid` has exited, leaving it for its owner to reap (`waitid` with `WNOWAIT`).
fn peek_exit(pid: u32) -> std::io::Result<Option<ExitInfo>> {
    // SAFETY: siginfo_t is plain data; zeroed is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid writes only into `info`, which lives for the call.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r == -1 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ECHILD) {
            // Reaped by its owner already, or not our child: all we can tell is whether it is
            // still there.
            // SAFETY: signal 0 only checks existence.
            let gone = unsafe { libc::kill(pid as libc::pid_t, 0) } == -1
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            return Ok(gone.then_some(ExitInfo::Unknown));
        }
        return Err(e);
    }
    // SAFETY: waitid filled `info` (si_pid stays 0 when no child changed state).
    let (si_pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if si_pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => ExitInfo::Code(status),
        libc::CLD_KILLED | libc::CLD_DUMPED => ExitInfo::Signal(status),
        _ => ExitInfo::Unknown,
    }))
}

/// The accelerator to use, after probing `/dev/kvm` if needed.
pub fn resolve_accel(vm: &str, accel: Accel) -> Result<AccelKind, QemuError> {
    let probe = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
    };
    match accel {
        Accel::Tcg => Ok(AccelKind::Tcg),
        Accel::Auto => Ok(if probe().is_ok() {
            AccelKind::Kvm
        } else {
            AccelKind::Tcg
        }),
        Accel::Kvm => {
            probe()
                .map(|()| AccelKind::Kvm)
                .map_err(|source| QemuError::KvmUnavailable {
                    vm: vm.to_owned(),
                    source,
                })
        }
    }
}

/// The end of a text file (lossy UTF-8), for error messages.
fn file_tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

/// Starts `def`, with the driver owning the QEMU process (SIGKILLed if the [`RunningVm`] is
/// dropped while QEMU runs). QEMU gets its own process group, so a terminal's Ctrl-C aimed at
/// the caller does not reach the VM.
pub async fn start(def: &VmDefinition, opts: &StartOptions) -> Result<RunningVm, QemuError> {
    let mut child = None;
    let die_with_parent = opts.die_with_parent;
    let vm = start_inner(def, opts, |mut cmd| {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        if die_with_parent {
            // SAFETY: prctl is async-signal-safe and touches only the child.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let c = cmd.spawn()?;
        let pid = c.id();
        child = Some(c);
        Ok(pid)
    })
    .await;
    match (vm, child) {
        (Ok(mut vm), Some(c)) => {
            vm.proc = Proc::Owned(c);
            Ok(vm)
        }
        (Err(e), Some(mut c)) => {
            let _ = c.kill();
            let _ = c.wait();
            Err(e)
        }
        (r, None) => r,
    }
}

/// Starts `def` with a caller-supplied spawner, which starts the prepared command and returns
/// its pid, e.g. to put QEMU into a test's process group. The caller owns (and reaps) the
/// process; the driver watches it without reaping (`waitid(WNOWAIT)`) and never kills it on
/// drop.
pub async fn start_with(
    def: &VmDefinition,
    opts: &StartOptions,
    spawn: impl FnOnce(Command) -> std::io::Result<u32>,
) -> Result<RunningVm, QemuError> {
    start_inner(def, opts, spawn).await
}

async fn start_inner(
    def: &VmDefinition,
    opts: &StartOptions,
    spawn: impl FnOnce(Command) -> std::io::Result<u32>,
) -> Result<RunningVm, QemuError> {
    def.validate()?;
    let vm = def.name.clone();
    let host_path = |what, path: &Path, problem: String| QemuError::HostPath {
        vm: vm.clone(),
        what,
        path: path.to_owned(),
        problem,
    };
    std::fs::create_dir_all(&opts.run_dir)
        .map_err(|e| host_path("run_dir", &opts.run_dir, format!("cannot create it: {e}")))?;
    let qmp_socket = opts.run_dir.join("qmp.sock");
    check_socket_path(&qmp_socket)
        .map_err(|p| host_path("QMP socket", &qmp_socket, format!("{p} (run_dir)")))?;
    if qmp_socket.exists() {
        if std::os::unix::net::UnixStream::connect(&qmp_socket).is_ok() {
            return Err(host_path(
                "QMP socket",
                &qmp_socket,
                "is in use by a running QEMU: stop it or use another run_dir".into(),
            ));
        }
        std::fs::remove_file(&qmp_socket)
            .map_err(|e| host_path("QMP socket", &qmp_socket, format!("stale socket: {e}")))?;
    }
    let serial_dir = def.serial_log.parent().unwrap_or(Path::new("/"));
    if !serial_dir.is_dir() {
        return Err(host_path(
            "serial_log directory",
            serial_dir,
            "does not exist: create it".into(),
        ));
    }
    if let Some(k) = &def.kernel {
        let files = [("kernel", Some(&k.kernel)), ("initrd", k.initrd.as_ref())];
        for (what, path) in files {
            if let Some(path) = path.filter(|p| !p.is_file()) {
                return Err(host_path(
                    what,
                    path,
                    "is not a file: build it (scripts/build-linux-guest for the test guest) or fix `kernel` in the definition".into(),
                ));
            }
        }
    }
    let accel = resolve_accel(&vm, opts.accel)?;
    let stderr_path = opts.run_dir.join("qemu.stderr");
    let stderr = std::fs::File::create(&stderr_path)
        .map_err(|e| host_path("QEMU stderr file", &stderr_path, e.to_string()))?;

    let mut cmd = Command::new(&opts.qemu_binary);
    cmd.args(qemu_args(def, accel, &qmp_socket))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    tracing::info!(vm = %vm, %accel, qemu = %opts.qemu_binary.display(), "starting QEMU");
    let pid = spawn(cmd).map_err(|source| QemuError::Spawn {
        vm: vm.clone(),
        binary: opts.qemu_binary.clone(),
        source,
    })?;
    let mut proc = Proc::External(pid);
    match connect_and_run(&vm, &mut proc, opts, &qmp_socket, &stderr_path).await {
        Ok((qmp, events)) => Ok(RunningVm {
            name: vm,
            proc,
            qmp,
            events,
            accel,
            serial: SerialLog::new(&def.serial_log),
            qmp_socket,
            stderr_path,
            exit: None,
        }),
        Err(e) => {
            // A half-started QEMU is of no use: stop it (its owner reaps it).
            let _ = proc.kill();
            Err(e)
        }
    }
}

/// Waits for QEMU's QMP socket, connects, and resumes the paused VM.
async fn connect_and_run(
    vm: &str,
    proc: &mut Proc,
    opts: &StartOptions,
    qmp_socket: &Path,
    stderr_path: &Path,
) -> Result<(QmpClient, tokio::sync::broadcast::Receiver<QmpEvent>), QemuError> {
    let pid = proc.pid();
    let vm = vm.to_owned();
    // Wait for the QMP socket, noticing an early exit (a bad option, a missing NBD socket...).
    let deadline = Instant::now() + opts.start_timeout;
    let mut pause = Duration::from_millis(5);
    let qmp = loop {
        let exited = proc.try_exit().map_err(|source| QemuError::Process {
            vm: vm.clone(),
            pid,
            what: "waiting for it to start",
            source,
        })?;
        if let Some(status) = exited {
            return Err(QemuError::StartExited {
                vm: vm.clone(),
                status,
                stderr: file_tail(stderr_path, STDERR_TAIL),
            });
        }
        if qmp_socket.exists() {
            match QmpClient::connect(qmp_socket, opts.command_timeout).await {
                Ok(c) => break c,
                Err(QmpError::Connect { .. }) => {}
                Err(source) => return Err(start_failure(&vm, proc, stderr_path, source).await),
            }
        }
        if Instant::now() >= deadline {
            return Err(QemuError::StartTimeout {
                vm: vm.clone(),
                socket: qmp_socket.to_owned(),
                after: opts.start_timeout,
                stderr: file_tail(stderr_path, STDERR_TAIL),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    };
    let events = qmp.events();
    // QEMU started paused (-S): every event from here on is seen.
    if let Err(source) = qmp.cont().await {
        return Err(start_failure(&vm, proc, stderr_path, source).await);
    }
    Ok((qmp, events))
}

/// The error for a QMP failure during start. QEMU opens its QMP socket before its disks: a
/// QEMU that is exiting (a missing NBD socket, a bad image) drops the session, and its stderr
/// says why, so an exit within a few seconds is reported as such.
async fn start_failure(
    vm: &str,
    proc: &mut Proc,
    stderr_path: &Path,
    source: QmpError,
) -> QemuError {
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Some(status)) = proc.try_exit() {
            return QemuError::StartExited {
                vm: vm.to_owned(),
                status,
                stderr: file_tail(stderr_path, STDERR_TAIL),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    QemuError::Qmp {
        vm: vm.to_owned(),
        source: Box::new(source),
    }
}

/// A started VM: its QEMU process and QMP session.
pub struct RunningVm {
    name: String,
    proc: Proc,
    qmp: QmpClient,
    events: tokio::sync::broadcast::Receiver<QmpEvent>,
    accel: AccelKind,
    serial: SerialLog,
    qmp_socket: PathBuf,
    stderr_path: PathBuf,
    exit: Option<ExitInfo>,
}

impl std::fmt::Debug for RunningVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningVm")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("accel", &self.accel)
            .field("exit", &self.exit)
            .finish_non_exhaustive()
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Proc::Owned(c) = &mut self.proc {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl RunningVm {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The accelerator QEMU runs with.
    pub fn accel(&self) -> AccelKind {
        self.accel
    }

    /// The QMP session (for any command: [`QmpClient::execute`]).
    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }

    /// The QMP socket.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// The file QEMU's stderr goes to.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The serial console log.
    pub fn serial(&self) -> &SerialLog {
        &self.serial
    }

    /// The next QMP event, or None when `deadline` passes or the connection is gone.
    pub async fn next_event(&mut self, deadline: Instant) -> Option<QmpEvent> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Ok(ev)) => return Some(ev),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                    tracing::warn!(vm = %self.name, lost = n, "QMP events lost (receiver lagged)");
                }
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Waits for the event `name` (skipping others) until `deadline`.
    pub async fn wait_for_event(&mut self, name: &str, deadline: Instant) -> Option<QmpEvent> {
        while let Some(ev) = self.next_event(deadline).await {
            if ev.name == name {
                return Some(ev);
            }
        }
        None
    }

    /// QEMU's exit status, if it has exited.
    pub fn try_exit(&mut self) -> Result<Option<ExitInfo>, QemuError> {
        if self.exit.is_some() {
            return Ok(self.exit);
        }
        let e = self.proc.try_exit().map_err(|source| QemuError::Process {
            vm: self.name.clone(),
            pid: self.pid(),
            what: "checking whether it exited",
            source,
        })?;
        self.exit = e;
        Ok(e)
    }

    /// Whether QEMU runs and what QMP says, or how it ended.
    pub async fn status(&mut self) -> Result<VmStatus, QemuError> {
        if let Some(e) = self.try_exit()? {
            return Ok(VmStatus::Exited(e));
        }
        match self.qmp.query_status().await {
            Ok(s) => Ok(VmStatus::Alive {
                running: s.running,
                state: s.status,
            }),
            Err(source) => {
                // QEMU may have exited between the two checks.
                if let Some(e) = self.wait_exit(Duration::from_millis(500)).await? {
                    return Ok(VmStatus::Exited(e));
                }
                Err(QemuError::Qmp {
                    vm: self.name.clone(),
                    source: Box::new(source),
                })
            }
        }
    }

    /// Waits up to `timeout` for QEMU to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitInfo>, QemuError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(e) = self.try_exit()? {
                return Ok(Some(e));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Stops the VM: the ACPI power button (`system_powerdown`), up to `timeout` for the guest
    /// to power off; then `quit`, up to [`QUIT_GRACE`]; then SIGKILL. Says which step worked.
    pub async fn shutdown(&mut self, timeout: Duration) -> Result<ShutdownReport, QemuError> {
        self.shutdown_with(timeout, QUIT_GRACE).await
    }

    /// [`RunningVm::shutdown`] with a chosen grace for `quit`.
    pub async fn shutdown_with(
        &mut self,
        timeout: Duration,
        quit_grace: Duration,
    ) -> Result<ShutdownReport, QemuError> {
        let started = Instant::now();
        let report = |outcome, exit, notes| ShutdownReport {
            outcome,
            exit,
            elapsed: started.elapsed(),
            notes,
        };
        let mut notes = Vec::new();
        if let Some(exit) = self.try_exit()? {
            return Ok(report(ShutdownOutcome::AlreadyExited, exit, notes));
        }
        match self.qmp.system_powerdown().await {
            Ok(()) => {
                if let Some(exit) = self.wait_exit(timeout).await? {
                    return Ok(report(ShutdownOutcome::PoweredOff, exit, notes));
                }
                notes.push(format!(
                    "the guest did not power off within {timeout:?} of the ACPI power button"
                ));
            }
            Err(e) => notes.push(format!("system_powerdown: {e}")),
        }
        match self.qmp.quit().await {
            Ok(()) => {}
            // QEMU may close the socket before its reply is read.
            Err(e) if e.is_disconnected() => {}
            Err(e) => notes.push(format!("quit: {e}")),
        }
        if let Some(exit) = self.wait_exit(quit_grace).await? {
            return Ok(report(ShutdownOutcome::Quit, exit, notes));
        }
        notes.push(format!("QEMU did not exit within {quit_grace:?} of quit"));
        let exit = self.kill().await?;
        Ok(report(ShutdownOutcome::Killed, exit, notes))
    }

    /// SIGKILLs QEMU and waits for it to be gone.
    pub async fn kill(&mut self) -> Result<ExitInfo, QemuError> {
        if let Some(e) = self.try_exit()? {
            return Ok(e);
        }
        self.proc.kill().map_err(|source| QemuError::Process {
            vm: self.name.clone(),
            pid: self.pid(),
            what: "SIGKILL",
            source,
        })?;
        self.wait_exit(KILL_GRACE)
            .await?
            .ok_or(QemuError::Unkillable {
                vm: self.name.clone(),
                pid: self.pid(),
                after: KILL_GRACE,
            })
    }

    /// Waits until `pattern` appears on the serial console, until `deadline`; returns the whole
    /// log. Fails early, with the log's tail, if QEMU exits first.
    pub async fn wait_for_serial(
        &mut self,
        pattern: &str,
        deadline: Instant,
    ) -> Result<String, QemuError> {
        self.wait_serial_until(pattern, deadline, |log| {
            log.contains(pattern).then(|| log.to_owned())
        })
        .await
    }

    /// Waits until `check` returns `Some` for the serial log (read whole at each poll), until
    /// `deadline`; `what` names the awaited output in the error.
    pub async fn wait_serial_until<T>(
        &mut self,
        what: &str,
        deadline: Instant,
        mut check: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, QemuError> {
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        loop {
            let log = self.serial.read();
            if let Some(t) = check(&log) {
                return Ok(t);
            }
            let exited = self.try_exit()?;
            if exited.is_some() || Instant::now() >= deadline {
                // One last read: the output may have landed just before QEMU exited.
                let log = self.serial.read();
                if let Some(t) = check(&log) {
                    return Ok(t);
                }
                let state = match exited {
                    Some(e) => format!(
                        "QEMU {e}; its stderr: {}",
                        file_tail(&self.stderr_path, 1000).trim()
                    ),
                    None => "QEMU still running".into(),
                };
                return Err(QemuError::SerialTimeout {
                    vm: self.name.clone(),
                    pattern: what.to_owned(),
                    path: self.serial.path().to_owned(),
                    after: started.elapsed(),
                    detail: format!(
                        "{state}; the log's last lines:\n{}",
                        crate::serial::tail_lines(&log, 20)
                    ),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}
