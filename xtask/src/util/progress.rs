//! Progress reporting: indicatif spinners and bars on a terminal, nothing when stderr is not one
//! (CI logs stay readable), and plain one-line notes that always print.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

fn interactive() -> bool {
    std::io::stderr().is_terminal()
}

/// A spinner for one step whose length is unknown. Finish it with [`Step::done`].
pub struct Step {
    bar: ProgressBar,
    label: String,
    start: std::time::Instant,
}

pub fn step(label: impl Into<String>) -> Step {
    let label = label.into();
    let bar = if interactive() {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("static template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    };
    bar.set_message(label.clone());
    Step { bar, label, start: std::time::Instant::now() }
}

impl Step {
    pub fn set_message(&self, msg: impl Into<String>) {
        self.bar.set_message(format!("{}: {}", self.label, msg.into()));
    }

    /// Clears the spinner and, on a terminal, leaves one line saying how long the step took.
    pub fn done(self) {
        self.bar.finish_and_clear();
        if interactive() {
            eprintln!("  {} ({:.1} s)", self.label, self.start.elapsed().as_secs_f64());
        }
    }
}

/// A byte-counting bar with the rate (downloads, uploads).
pub fn bytes(label: impl Into<String>, total: u64) -> ProgressBar {
    if !interactive() {
        return ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(label.into());
    bar
}

/// A line the user should always see, even off a terminal: what was installed, fetched, written.
pub fn note(msg: impl AsRef<str>) {
    eprintln!("xtask: {}", msg.as_ref());
}
