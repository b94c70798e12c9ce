//! Delivering one event: the endpoint checks (`endpoint`), Standard Webhooks
//! signing (`sign`), one HTTP attempt (`http`) with its name resolution
//! (`resolve`) and its SSRF guard (`ssrf`), and the worker step that ties
//! them to the state machine and the database (`worker`). The decisions
//! themselves (retry or fail, when next) are in `state`. Who delivers is
//! one seam (`provider`): the daemon's own HTTP sender, or a Svix server
//! (`svix`: its client, and the pure mapping of what it reports).

pub mod endpoint;
pub mod http;
pub mod provider;
pub mod resolve;
pub mod sign;
pub mod ssrf;
pub mod svix;
pub mod worker;
