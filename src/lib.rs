//! pgward: a transparent PostgreSQL wire-protocol proxy that guards data.
//!
//! Module map (see DESIGN.md): `config` (TOML schema), `wire` (framing and the
//! messages pgward builds), `proxy` (listener, sessions, relay, upstream),
//! `identity` (who the client is, RLS context), `tls` (rustls setup), `cluster` (throwaway Postgres for `demo` and tests),
//! `logging`.

pub mod admin;
pub mod audit;
pub mod cluster;
pub mod config;
pub mod identity;
pub mod logging;
pub mod pgclient;
pub mod policy;
pub mod proxy;
pub mod soft_delete_check;
pub mod soft_delete_ddl;
pub mod tls;
pub mod wire;
