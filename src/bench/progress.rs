//! The live progress line of a run on stderr: plain text redrawn in place with `\r` ten times a
//! second, off when stderr is not a terminal or with `--quiet`.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::run::{Counters, Stop};

const WIDTH: usize = 24;

/// A running progress line; [`Bar::finish`] draws the final state and ends the line.
pub struct Bar {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Bar {
    /// Starts redrawing `label`'s progress, or does nothing when `enabled` is false.
    pub fn start(label: String, stop: Stop, counters: Arc<Counters>, enabled: bool) -> Bar {
        if !enabled {
            return Bar { stop: None, task: None };
        }
        let (tx, mut rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut width = 0usize;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    _ = &mut rx => true,
                };
                let text = line(&label, stop, &counters, start.elapsed());
                // Spaces wipe what a longer previous line left behind.
                let pad = " ".repeat(width.saturating_sub(text.chars().count()));
                width = text.chars().count();
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r{text}{pad}{}", if last { "\n" } else { "" });
                let _ = err.flush();
                if last {
                    break;
                }
            }
        });
        Bar { stop: Some(tx), task: Some(task) }
    }

    pub async fn finish(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// `sim-large c=10 [##########--------------] 9/20 failed 0 in flight 10 2.4s`
pub fn line(label: &str, stop: Stop, c: &Counters, elapsed: Duration) -> String {
    let done = c.done.load(Relaxed);
    let (fraction, count) = match stop {
        Stop::Requests(n) => (done as f64 / n.max(1) as f64, format!("{done}/{n}")),
        Stop::For(d) => (elapsed.as_secs_f64() / d.as_secs_f64().max(1e-9), format!("{done} done")),
    };
    let filled = ((fraction.clamp(0.0, 1.0) * WIDTH as f64).round() as usize).min(WIDTH);
    format!(
        "{label} [{}{}] {count} failed {} in flight {} {:.1}s",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        c.failed.load(Relaxed),
        c.in_flight.load(Relaxed),
        elapsed.as_secs_f64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let c = Counters::default();
        c.done.store(10, Relaxed);
        c.failed.store(1, Relaxed);
        c.in_flight.store(4, Relaxed);
        let text = line("m c=4", Stop::Requests(20), &c, Duration::from_millis(2500));
        assert_eq!(text, format!("m c=4 [{}{}] 10/20 failed 1 in flight 4 2.5s", "#".repeat(12), "-".repeat(12)));
        let text = line("m c=4", Stop::For(Duration::from_secs(10)), &c, Duration::from_secs(20));
        assert!(text.starts_with(&format!("m c=4 [{}] 10 done", "#".repeat(24))), "{text}");
    }
}
