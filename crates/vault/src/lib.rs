//! # lifeboat-vault: the control plane's state and API
//!
//! The vault knows the regions (each with its recovery-point store), the hosts whose agents
//! registered, the VMs, the replication policies, the replicated items (one per protected VM,
//! with its state, policy, direction, epoch and % synchronized), the jobs that run operations
//! on items (steps, progress, the whole error), and an event log. It serves them as a REST API
//! ([`api::router`]; OpenAPI document at `/api/openapi.json`; every other route needs
//! `Authorization: Bearer <token>`).
//!
//! ## State
//!
//! One SQLite file ([`db::Db`]): WAL journal, `synchronous=FULL`, foreign keys on; schema by
//! numbered migrations (`schema_version`), frozen once released; a database written by a newer
//! vault is refused. Every change is one transaction, so a vault killed at any moment (kill -9)
//! restarts from the last committed state.
//!
//! ## Operations and jobs
//!
//! An operation on an item ([`service::Vault::start`]) runs the item state machine
//! (`lifeboat_types::item::begin`) **in the same transaction** that records the job and moves
//! the item to the in-progress state: a wrong-state operation is refused with HTTP 409 and a
//! message naming the state and the operations allowed in it, and two racing requests cannot
//! both start. The job is then run by the vault's [`service::Executor`] (the agents' side),
//! which reports steps and ends the job; [`service::Vault::finish_job`] moves the item by
//! `lifeboat_types::item::finish` (success: the operation's target state; failure: back to the
//! state it started from). On start, jobs that a previous run left `running` are ended as
//! failed with a message saying to retry, so an item is never left stuck in progress.
//!
//! ## Replication groups
//!
//! [`groups`]: up to 16 protected VMs share their points, cut by the vault across all their
//! journals at one instant (hold every journal, then mark each); a group fails over to one
//! shared point and a member alone cannot (see the module doc).
//!
//! ## Recovery plans
//!
//! [`plan`] (pure: definition, validation, the steps of a plan operation) and [`plan_run`]
//! (plans in the database; runs that go group by group through pre actions, the group's VMs
//! in parallel as ordinary item jobs, post actions; a failing step stops the run for retry or
//! skip, a manual action pauses it until confirmed; a run left running by a vault restart
//! fails at its step on start).
//!
//! ## Errors
//!
//! [`error::VaultError`]: each message names the object; the API body carries the message and
//! every cause (`{"error": ..., "causes": [...]}`); malformed bodies are 400 with serde's
//! reason; unknown objects 404; conflicts and wrong states 409; a missing or wrong token 401.

pub mod agent_wire;
pub mod agents;
pub mod api;
pub mod db;
pub mod disable;
pub mod drill;
pub mod error;
pub mod executor;
pub mod groups;
pub mod model;
pub mod plan;
pub mod plan_run;
mod plan_script;
pub mod portal;
pub mod reprotect;
pub mod service;

pub use db::Db;
pub use error::VaultError;
pub use executor::{AgentClient, AgentExecutor};
pub use service::{Executor, NoAgents, Vault};
