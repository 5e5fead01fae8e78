//! Progress bars of long commands (`selftest`, `tune`, large `sim` runs), drawn on stderr
//! only when stderr is a terminal; otherwise nothing at all is written, so logs and tests
//! see the same output as before.
//!
//! Commands that relaunch themselves as a job (`selftest`, `tune -n`) run their work in
//! ranks whose stderr is a pipe to the launcher, so the bar is drawn by the launching
//! process: [`JobBar::start`] names a small file in [`PROGRESS_ENV`], which the ranks
//! inherit, and polls it; rank 0 writes its steps there ([`RankReport`]) as `done total
//! message`, replacing the file whole (write, then rename), at most every
//! [`REPORT_EVERY`] and at the last step.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// The file where rank 0 of a relaunched job reports its steps; set by the launching
/// process only when it draws a bar.
pub const PROGRESS_ENV: &str = "TOPOCCL_PROGRESS_FILE";

/// Least time between two reports of a rank (the bar is redrawn about as often).
pub const REPORT_EVERY: Duration = Duration::from_millis(100);

/// Whether bars are drawn: stderr is a terminal.
pub fn visible() -> bool {
    std::io::stderr().is_terminal()
}

/// A bar of `len` steps named `what` on stderr, or a hidden one (every call a no-op) when
/// stderr is not a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:32}] {pos}/{len} {elapsed_precise} (eta {eta}) {wide_msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    ProgressBar::new(len)
        .with_style(style)
        .with_prefix(what.to_string())
}

/// A spinner named `what` that says which stage runs (`set_message`) and for how long,
/// or a hidden one when stderr is not a terminal.
pub fn spinner(what: &str) -> ProgressBar {
    if !visible() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let s = ProgressBar::new_spinner()
        .with_style(style)
        .with_prefix(what.to_string());
    s.enable_steady_tick(REPORT_EVERY);
    s
}

/// The bar of a relaunched job, drawn by the launching process from rank 0's reports.
pub struct JobBar {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    poller: Option<JoinHandle<()>>,
}

impl JobBar {
    /// When stderr is a terminal: a bar named `what`, and the report file named in the
    /// environment for the ranks about to be started. Otherwise `None`, and any
    /// inherited [`PROGRESS_ENV`] is dropped so that no rank writes a report.
    pub fn start(what: &str) -> Option<JobBar> {
        if !visible() {
            std::env::remove_var(PROGRESS_ENV);
            return None;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("topoccl-progress-{}-{nanos}", std::process::id()));
        // Before any thread starts and before the ranks are spawned: they inherit it.
        std::env::set_var(PROGRESS_ENV, &path);
        let stop = Arc::new(AtomicBool::new(false));
        let bar = bar(0, what);
        let poller = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((done, total, message)) = read_report(&path) {
                        if done >= total {
                            // Gone before the ranks print their results (see
                            // `RankReport::finish`).
                            break;
                        }
                        bar.set_length(total);
                        bar.set_position(done);
                        bar.set_message(message);
                    }
                    std::thread::sleep(REPORT_EVERY);
                }
                bar.finish_and_clear();
            })
        };
        Some(JobBar {
            path,
            stop,
            poller: Some(poller),
        })
    }
}

impl Drop for JobBar {
    /// Clears the bar and removes the report file.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(p) = self.poller.take() {
            let _ = p.join();
        }
        let _ = std::fs::remove_file(&self.path);
        // PROGRESS_ENV stays set: the job is over, and changing the environment while
        // other threads (the launcher's) may read it is not safe.
    }
}

/// `done total message`, as rank 0 wrote it; `None` while there is none or it is cut.
fn read_report(path: &Path) -> Option<(u64, u64, String)> {
    parse_report(&std::fs::read_to_string(path).ok()?)
}

fn parse_report(text: &str) -> Option<(u64, u64, String)> {
    let line = text.strip_suffix('\n')?;
    let mut parts = line.splitn(3, ' ');
    let done = parts.next()?.parse().ok()?;
    let total = parts.next()?.parse().ok()?;
    Some((done, total, parts.next().unwrap_or("").to_string()))
}

fn format_report(done: u64, total: u64, message: &str) -> String {
    format!("{done} {total} {}\n", message.replace('\n', " "))
}

/// A rank's side of [`JobBar`]: writes its steps where the launcher asked, if it did and
/// this is rank 0; does nothing otherwise. Reports are best effort: a failed write is
/// ignored, since the bar is only for the eye.
pub struct RankReport {
    path: Option<PathBuf>,
    last: Option<Instant>,
    /// Whether the launcher draws a bar (every rank knows; only rank 0 writes).
    drawn: bool,
}

impl RankReport {
    /// From [`PROGRESS_ENV`], for rank `rank`.
    pub fn from_env(rank: u32) -> RankReport {
        let path = std::env::var_os(PROGRESS_ENV);
        RankReport {
            drawn: path.is_some(),
            path: path.filter(|_| rank == 0).map(PathBuf::from),
            last: None,
        }
    }

    /// Reports the last step, then, while the launcher draws a bar, waits long enough for
    /// it to clear the bar, so that what the ranks print next is not drawn over.
    pub fn finish(mut self, total: u64) {
        self.report(total, total, "done");
        if self.drawn {
            std::thread::sleep(3 * REPORT_EVERY);
        }
    }

    /// Says `done` of `total` steps are done, the current one being `message`.
    pub fn report(&mut self, done: u64, total: u64, message: &str) {
        let Some(path) = &self.path else { return };
        let due = self.last.is_none_or(|t| t.elapsed() >= REPORT_EVERY);
        if !due && done < total {
            return;
        }
        self.last = Some(Instant::now());
        let mut part = path.clone().into_os_string();
        part.push(".part");
        let part = PathBuf::from(part);
        if std::fs::write(&part, format_report(done, total, message)).is_ok() {
            let _ = std::fs::rename(&part, path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_read_back() {
        let text = format_report(3, 10, "allreduce\n1 MiB");
        assert_eq!(
            parse_report(&text),
            Some((3, 10, "allreduce 1 MiB".to_string()))
        );
        assert_eq!(parse_report("3 10 \n"), Some((3, 10, String::new())));
        assert_eq!(parse_report("3 10"), None, "a report cut short");
        assert_eq!(parse_report("3\n"), None);
        assert_eq!(parse_report("x 10 m\n"), None);
    }

    #[test]
    fn a_rank_reports_to_the_file_at_the_last_step_at_least() {
        let path = std::env::temp_dir().join(format!("topoccl-report-{}", std::process::id()));
        let mut r = RankReport {
            path: Some(path.clone()),
            last: None,
            drawn: true,
        };
        r.report(1, 3, "first");
        assert_eq!(read_report(&path), Some((1, 3, "first".to_string())));
        r.report(2, 3, "too soon");
        assert_eq!(read_report(&path), Some((1, 3, "first".to_string())));
        r.report(3, 3, "last");
        assert_eq!(read_report(&path), Some((3, 3, "last".to_string())));
        let _ = std::fs::remove_file(&path);
        let mut silent = RankReport {
            path: None,
            last: None,
            drawn: false,
        };
        silent.report(1, 1, "nowhere");
        silent.finish(1);
    }

    #[test]
    fn hidden_without_a_terminal() {
        // The test harness captures stderr: not a terminal.
        if !visible() {
            assert!(bar(5, "x").is_hidden());
            assert!(spinner("x").is_hidden());
        }
    }
}
