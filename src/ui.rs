//! What the binary says on stderr besides errors: progress bars and notes, silenced by
//! `--quiet` (for scripts).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use viopath_reporter::Progress;

static QUIET: AtomicBool = AtomicBool::new(false);

pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A note on stderr, unless quiet.
macro_rules! note {
    ($($t:tt)*) => {
        if !$crate::ui::quiet() {
            eprintln!($($t)*);
        }
    };
}
pub(crate) use note;

/// A progress bar over a trace's bytes, drawn on stderr when it is a terminal and not
/// quiet; cleared when dropped.
pub struct Bar(ProgressBar);

impl Bar {
    pub fn new(what: &str) -> Bar {
        let target = if quiet() {
            ProgressDrawTarget::hidden()
        } else {
            // indicatif draws nothing when stderr is not a terminal.
            ProgressDrawTarget::stderr()
        };
        let pb = ProgressBar::with_draw_target(None, target);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        pb.set_message(what.to_owned());
        Bar(pb)
    }

    /// The callback the reporter calls while it reads.
    pub fn progress(&self) -> Progress {
        let pb = self.0.clone();
        Progress(Arc::new(move |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        }))
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
