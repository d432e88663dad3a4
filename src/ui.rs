//! What the binary says on stderr besides errors: progress bars and notes, silenced by
//! `--quiet` (for scripts).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tabled::Table;
use tabled::builder::Builder;
use tabled::settings::peaker::Priority;
use tabled::settings::{Style, Width};
use viopath_reporter::Progress;

static QUIET: AtomicBool = AtomicBool::new(false);
static WIDE: AtomicBool = AtomicBool::new(false);

/// The width tables are fitted to unless `--wide`: a terminal's that a report may be
/// pasted into, whatever the one at hand.
pub const COLUMNS: usize = 120;

pub fn set_wide(w: bool) {
    WIDE.store(w, Ordering::Relaxed);
}

/// A table in the one style all output uses, fitted to [`COLUMNS`] unless `--wide`:
/// where wider, its widest columns are wrapped at spaces first (the free text: paths,
/// notes, flags), so the numbers keep their own columns.
pub fn table(b: Builder) -> Table {
    fitted(
        b,
        if WIDE.load(Ordering::Relaxed) {
            None
        } else {
            Some(COLUMNS)
        },
    )
}

/// Prose for the terminal: `text` broken at spaces into lines of at most [`COLUMNS`]
/// (a word longer than that keeps its own line), later lines indented by two spaces.
pub fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split(' ') {
        let indent = if out.is_empty() { 0 } else { 2 };
        if !line.is_empty() && indent + line.chars().count() + 1 + word.chars().count() > COLUMNS {
            out.push_str(&line);
            out.push_str("\n  ");
            line.clear();
        } else if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out
}

fn fitted(b: Builder, width: Option<usize>) -> Table {
    let mut t = b.build();
    if t.count_rows() > 1 {
        t.with(Style::sharp());
    } else {
        // Only its header (nothing to list): the style's line under the header would
        // take the bottom border's place and leave the table open.
        t.with(Style::sharp().remove_horizontals());
    }
    if let Some(w) = width
        && t.total_width() > w
    {
        t.with(
            Width::wrap(w)
                .priority(Priority::max(true))
                .keep_words(true),
        );
    }
    t
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn widest_line(t: &Table) -> usize {
        t.to_string()
            .lines()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn a_wide_table_is_wrapped_to_the_width_keeping_its_numbers() {
        let mut b = Builder::default();
        b.push_record(["id", "e2e", "note"]);
        let long = "a page cache miss that waited for readahead of another read ".repeat(4);
        b.push_record(["17".to_owned(), "1234.5".to_owned(), long.clone()]);
        let t = fitted(b.clone(), Some(COLUMNS));
        assert!(widest_line(&t) <= COLUMNS, "{t}");
        let text = t.to_string();
        assert!(
            text.contains("1234.5") && text.contains("readahead"),
            "{text}"
        );
        // Nothing is lost: every word is still there.
        let words = |s: &str| {
            s.split_whitespace()
                .filter(|w| w.chars().all(char::is_alphanumeric))
                .count()
        };
        let body: String =
            text.replace(['│', '┌', '┐', '└', '┘', '├', '┤', '┬', '┴', '┼', '─'], " ");
        assert_eq!(
            words(&body),
            words("id e2e note 17") + words(&long),
            "{text}"
        );
        // --wide: as wide as its contents.
        assert!(widest_line(&fitted(b, None)) > COLUMNS);
    }

    #[test]
    fn prose_is_broken_at_spaces_to_the_width() {
        let text = "MISSED up to 12 events (the probe fired in an interrupt while its own program ran on that CPU; the kernel skips such runs): block_rq_complete: 12".repeat(2);
        let p = prose(&text);
        assert!(p.lines().all(|l| l.chars().count() <= COLUMNS), "{p}");
        assert!(p.lines().skip(1).all(|l| l.starts_with("  ")), "{p}");
        let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(words(&p), words(&text));
        assert_eq!(prose("short"), "short");
    }

    #[test]
    fn a_table_of_only_its_header_keeps_its_borders() {
        let mut b = Builder::default();
        b.push_record(["probe", "events", "lost"]);
        let text = fitted(b, Some(COLUMNS)).to_string();
        assert!(
            text.starts_with('┌') && text.trim_end().ends_with('┘'),
            "{text}"
        );
    }
}
