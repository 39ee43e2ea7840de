//! Sluice: an asynchronous SQL execution gateway for ClickHouse.
//!
//! ```text
//! client -> api -> executions table (Postgres) -> worker[tier] -> ClickHouse (HTTP)
//!                                                      |-> result store (object_store)
//! client <- api <- executions table + result store
//! bookkeeper -> executions table (reclaim) + ClickHouse (KILL)
//! ```
//!
//! Find a behaviour by its name: [`api`], [`store`], [`worker`], [`bookkeeper`],
//! [`clickhouse`], [`results`], [`execution`], [`job`], [`config`]; [`roles`] wires them into the
//! processes `sluice` runs; [`bench`] measures them; [`client`] is
//! `sluice query`, a client of the API like any other.

pub mod api;
pub mod auth;
pub mod bench;
pub mod bookkeeper;
pub mod clickhouse;
pub mod client;
pub mod config;
pub mod execution;
pub mod job;
pub mod metrics;
pub mod outage;
pub mod results;
pub mod roles;
pub mod sql;
pub mod store;
pub mod tasks;
pub mod worker;

/// A name for this process's worker or bookkeeper, unique across hosts and restarts:
/// `<host>-<pid>-<label>-<nonce>`. It shows in logs, `worker_id` and `/ready`.
pub(crate) fn instance_id(label: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let nonce = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{}-{label}-{nonce}", std::process::id())
}
