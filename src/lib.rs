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
//! [`clickhouse`], [`results`], [`execution`], [`config`]; [`roles`] wires them into the
//! processes `sluice` runs; [`bench`] measures them.

pub mod api;
pub mod bench;
pub mod bookkeeper;
pub mod clickhouse;
pub mod config;
pub mod execution;
pub mod metrics;
pub mod outage;
pub mod results;
pub mod roles;
pub mod store;
pub mod worker;
