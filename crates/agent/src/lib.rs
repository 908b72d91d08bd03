//! # lifeboat-agent: the host side of Lifeboat
//!
//! One agent runs per hypervisor host (`lifeboat agent`; `lifeboat up` runs one per region in
//! one process). It registers with the vault over HTTP and reports every two seconds; the vault
//! drives it by **desired state** (`lifeboat_vault::agent_wire`): every request says what a VM
//! should be on this host, the agent converges and answers its status, and the desired state
//! is persisted (write-temp-then-rename, fsync) before it acts, so a kill -9 of the agent at
//! any moment is followed by a restart that converges again.
//!
//! ## Roles of a VM on a host
//!
//! * **Source** ([`source::SourceVm`], primary region): the VM's disks are raw image files
//!   served over NBD on `<data>/vms/<vm>/nbd.sock` (export `disk<i>`), every write journaled
//!   before it is acknowledged (`lifeboat-disk`), QEMU attached with `-blockdev driver=nbd`.
//!   Protected: the journal is sealed and shipped every 0.5 s to the target region's store
//!   (`lifeboat-ship`), after an initial copy made while the guest writes; the instant before
//!   the last successful pass's seal is reported as `replicated_as_of` (the RPO); all of this
//!   is [`replication::Replication`], shared with re-protected recovered VMs. A store that
//!   refuses the segments' epoch (the VM failed over) **fences** the VM here: shipping stops,
//!   QEMU is killed, and it is never started again (also checked against the store's epoch
//!   when the agent restarts, before anything starts).
//! * **Replica** ([`replica::Replica`], target region): processes the store's journal into
//!   recovery points every second, stores due points and applies retention.
//! * **Recovered** ([`recovered::RecoveredVm`], target region after failover): instant
//!   recovery — each disk a `lifeboat_recover::RecoveryDisk` served over NBD straight from the
//!   point, writes journaled locally, hydration in the background — and QEMU on top; commit
//!   makes it final once every disk is local. **Re-protect** makes it the source of a reverse
//!   replication (`reverse.rs`: ship after `p0`, re-journal what diverged); its journal is
//!   kept bounded meanwhile (folded into a range summary).
//! * **Released** ([`local::Released`], the region a VM failed over from): the old source's
//!   (or an earlier recovered VM's) disks kept for re-protect: summary of their journal after
//!   the recovery point, block digests, and the seed of their region's store.
//! * `guest.rs`: app-consistent points through the VM's QEMU guest agent (peer-checked, always
//!   thawed; a failed freeze is a crash-consistent point and a reported miss).
//! * `cuts.rs`: the agent's phases of a replication group's cut (freeze, hold, commit,
//!   release, thaw).
//!
//! ## Locking
//!
//! Changes (PUT, DELETE, shutdown, start/stop) take the agent's `ops` lock one at a time;
//! status reads and reports take only the short map locks, so they never wait behind a
//! failover. Each source VM serializes its replication passes (`tick_lock`); each replica its
//! processing passes.
//!
//! ## QEMU
//!
//! Started with `PR_SET_PDEATHSIG` (an agent killed with -9 takes its VMs with it, since their
//! disks are served by the agent); a QEMU left over anyway is stopped over its QMP socket
//! before a VM starts again.

pub mod agent;
pub mod cuts;
pub mod digest;
pub mod guest;
pub mod local;
pub mod pick;
pub mod recovered;
pub mod replica;
pub mod replication;
pub mod source;
pub mod state;
pub mod vm;

pub use agent::{Agent, AgentConfig};
