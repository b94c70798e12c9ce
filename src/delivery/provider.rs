//! The seam between the shared machinery (state machine, scheduler,
//! record, API, console) and who actually delivers: the daemon's own HTTP
//! sender (`delivery.provider = "http"`) or a Svix server (`"svix"`). The
//! worker step (`worker::decide`) asks the provider for one due delivery
//! and gets back the update to record; everything around it is the same
//! for both.

use crate::config::{Config, Provider as ProviderKind};
use crate::delivery::http::Sender;
use crate::delivery::svix;

/// Who delivers, built once per process and shared by every worker.
pub enum Provider {
    /// The daemon sends each attempt itself.
    Http(Sender),
    /// A Svix server sends; the daemon hands over and polls.
    Svix(svix::Client),
}

impl Provider {
    /// Builds the provider `config` names, for `workers` workers.
    pub fn new(config: &Config, workers: usize) -> Provider {
        match (config.delivery.provider, &config.svix) {
            (ProviderKind::Svix, Some(svix)) => {
                Provider::Svix(svix::Client::new(svix, &config.delivery, workers))
            }
            _ => Provider::Http(Sender::new(&config.delivery, workers)),
        }
    }

    /// `"http"` or `"svix"`.
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Http(_) => "http",
            Provider::Svix(_) => "svix",
        }
    }
}
