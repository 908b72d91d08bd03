//! # lifeboat-qemu: running a protected (or failed-over) VM in QEMU
//!
//! The compute side of Lifeboat: the agent starts a VM's QEMU here, in the primary region for a
//! protected VM and in the secondary region after failover or for a DR drill, and stops it again.
//!
//! ## The VM definition ([`VmDefinition`], JSON)
//!
//! Name, vCPUs, memory (MiB), disks in boot order, NICs, the serial log file, an optional
//! QEMU guest agent socket and an optional direct kernel boot ([`KernelBoot`]: kernel, initrd,
//! command line; [`start`] checks that the files exist). A protected VM's disk is an **NBD export on a unix socket** served by
//! the agent's disk server (every write journaled before QEMU gets the acknowledgement); tests and
//! unprotected VMs may use local raw or qcow2 files. A NIC is QEMU user networking, with
//! `restrict: true` for a drill's isolated network (the guest reaches nothing). Validation
//! ([`VmDefinition::validate`]) refuses what cannot work and names the field and what to do;
//! [`start`] checks the host side (directories, KVM) before running QEMU.
//!
//! ## The QEMU command line ([`cmdline::qemu_args`], QEMU 7.2)
//!
//! ```text
//! qemu-system-x86_64 -no-user-config -nodefaults -S -name guest=NAME
//!   -machine pc -accel kvm|tcg -smp VCPUS -m MIB -display none
//!   -chardev socket,id=qmp,path=RUN_DIR/qmp.sock,server=on,wait=off -mon chardev=qmp,mode=control
//!   -chardev file,id=serial0,path=SERIAL_LOG -device isa-serial,chardev=serial0
//!   per disk i:  -blockdev driver=nbd,node-name=diskI,server.type=unix,server.path=SOCK,export=NAME,
//!                          cache.direct=off,discard=unmap
//!           or   -blockdev driver=raw|qcow2,node-name=diskI,file.driver=file,file.filename=PATH,discard=unmap
//!                -device ide-hd,drive=diskI,bus=ide.B,unit=U,bootindex=I   (or virtio-blk-pci)
//!   NICs:        -nic none | -netdev user,id=netJ[,restrict=on] -device virtio-net-pci|e1000,netdev=netJ[,mac=]
//!   guest agent: -chardev socket,id=qga0,path=SOCK,server=on,wait=off -device virtio-serial-pci,id=vser0
//!                -device virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0
//!   kernel boot: -kernel KERNEL [-initrd INITRD] -append CMDLINE   (plain values, no escaping;
//!                the kernel takes bootindex 0, the disks' indexes start at 1)
//! ```
//!
//! * `-nodefaults -no-user-config`: only the devices listed exist, whatever the host's config.
//! * IDE is the default bus: SeaBIOS boots it through int 13h, as any OS does; `virtio` is an
//!   option per disk.
//! * KVM when `/dev/kvm` opens read-write, else TCG ([`Accel::Auto`]; [`StartOptions::accel`]
//!   forces either).
//! * QEMU starts paused (`-S`). [`start`] connects QMP, subscribes to events and only then sends
//!   `cont`, so no event of the VM's life is missed. An exit during start is an error that quotes
//!   QEMU's stderr (`RUN_DIR/qemu.stderr`): a missing NBD socket or a bad image is reported by
//!   QEMU itself.
//!
//! ## QMP ([`qmp::QmpClient`])
//!
//! In-house, on tokio: greeting, `qmp_capabilities`, commands with ids answered through
//! per-command channels, events on a broadcast channel, QMP errors as [`QmpError::Command`]
//! with class and desc. Socket input is outside data: a malformed line breaks the connection
//! with a clear error for every waiting and later command; nothing panics. Details in
//! [`qmp`]'s doc.
//!
//! ## Process ownership and stopping
//!
//! [`start`] spawns and owns QEMU (its own process group; SIGKILLed if the [`RunningVm`] is
//! dropped). [`start_with`] lets the caller spawn it (tests put it into their process group);
//! the driver then watches the pid with `waitid(WNOWAIT)`, leaving the reaping to its owner.
//! [`RunningVm::shutdown`] is ACPI `system_powerdown` and up to `timeout` for the guest to power
//! off; then QMP `quit` (QEMU drains its I/O and exits), up to [`QUIT_GRACE`]; then SIGKILL. The
//! [`ShutdownReport`] says which step stopped it. A guest that ignores ACPI (no OS, or hung) is
//! thus stopped by `quit`. All waits are polls against a deadline.
//!
//! ## The guest agent ([`qga::Qga`])
//!
//! In-house, on tokio, over the `guest_agent_socket`: ping, info, `guest-fsfreeze-*` and
//! [`Qga::frozen`], which freezes the guest's filesystems, runs the caller's operation (e.g.
//! marking an app-consistent point in the journal) and always thaws them again, also after a
//! failed or timed-out freeze. Before sending anything it checks that the socket's peer is the
//! VM's own QEMU ([`RunningVm::pid`]), so it never freezes anything but that guest; it
//! synchronizes with `guest-sync-delimited`. Details in [`qga`]'s doc.
//!
//! ## The Linux test guest (`scripts/build-linux-guest`)
//!
//! Debian's kernel and an initramfs with busybox, qemu-ga and a writer whose files and log make
//! application-level consistency checkable on a copy of its ext4 data disk; booted with
//! [`KernelBoot`]. See the script's header and `tests/linux_guest.rs`.
//!
//! ## The seqwriter test guest ([`seqwriter`])
//!
//! `guest/seqwriter.S` writes sequence-numbered, checksummed 4 KiB records in a ring forever and
//! prints `seq N` on COM1; it resumes from the highest record on disk after a reboot.
//! [`seqwriter::verify`] reads a disk image and says whether it holds exactly the writes 1..N
//! (nothing missing, nothing beyond N, nothing torn but the in-flight write), which is how
//! replication, recovery points and failover are checked end to end with a real VM.
//!
//! ## Not yet
//!
//! Reattaching to a QEMU that outlived its agent, NBD `reconnect-delay` across disk-server
//! restarts, guest-agent commands other than ping/info/fsfreeze, hotplug, machine types other than `pc`.

pub mod cmdline;
pub mod definition;
mod driver;
pub mod qga;
pub mod qmp;
pub mod seqwriter;
pub mod serial;

pub use cmdline::AccelKind;
pub use definition::{
    DefinitionError, Disk, DiskBus, DiskSource, ImageFormat, KernelBoot, Network, Nic, NicModel,
    VmDefinition,
};
pub use driver::{
    resolve_accel, start, start_with, Accel, ExitInfo, QemuError, RunningVm, ShutdownOutcome,
    ShutdownReport, StartOptions, VmStatus, QUIT_GRACE,
};
pub use qga::{FreezeRun, FsfreezeStatus, GuestCommand, GuestInfo, Qga, QgaError, THAW_TIMEOUT};
pub use qmp::{QmpClient, QmpError, QmpEvent, StatusInfo};
pub use serial::SerialLog;
