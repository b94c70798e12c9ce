//! The progress bar `once` shows on a terminal: deliveries done of those due
//! at the sweep start, rate and ETA, on stderr. Not shown when stderr is not a
//! terminal or with `--json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::reconcile::hooks::Hooks;
use crate::reconcile::job::Done;
use crate::reconcile::report::Tally;

/// A progress bar fed by the pass's hooks.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar on stderr when it is a terminal and `wanted`; `None` otherwise.
    pub fn on_terminal(wanted: bool) -> Option<Progress> {
        if !wanted || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} deliveries ({per_sec}, ETA {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Some(Progress { bar })
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Hooks for Progress {
    fn started(&self, due: Option<u64>) {
        self.bar.set_length(due.unwrap_or(0));
    }

    fn finished(&self, _done: &Done, tally: &Tally) {
        self.bar.set_position(tally.deliveries);
    }
}
