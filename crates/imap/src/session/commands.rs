//! The commands of a session, one module per concern; each adds methods to
//! [`Session`](crate::session::Session). Dispatch and state stay in `session.rs`.

mod auth;
mod copy;
mod fetch;
pub mod list;
mod mailbox;
mod search;
mod select;
mod store;
