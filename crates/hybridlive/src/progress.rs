//! Progress of a batch: bars per file and overall on a terminal, plain lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Resolution of a file bar: clips × this.
const STEPS_PER_CLIP: u64 = 100;

/// Progress of the whole batch.
pub struct Progress {
    bars: Option<(MultiProgress, ProgressBar)>,
}

/// Progress of one recording.
pub struct FileProgress<'a> {
    progress: &'a Progress,
    name: String,
    clips: usize,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `total_clips` across all files; bars only when stderr is a terminal.
    pub fn new(total_clips: usize) -> Self {
        let bars = std::io::stderr().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(total_clips as u64));
            overall.set_style(
                ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} clips {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            overall.set_prefix("overall");
            overall.enable_steady_tick(Duration::from_millis(200));
            (multi, overall)
        });
        Self { bars }
    }

    /// Starts reporting on one recording.
    pub fn file(&self, name: &str, clips: usize) -> FileProgress<'_> {
        let bar = self.bars.as_ref().map(|(multi, _)| {
            let bar = multi.add(ProgressBar::new(clips as u64 * STEPS_PER_CLIP));
            bar.set_style(
                ProgressStyle::with_template("{prefix:>24} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            let short: String = name
                .chars()
                .rev()
                .take(24)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bar.set_prefix(short);
            bar
        });
        FileProgress {
            progress: self,
            name: name.to_owned(),
            clips,
            bar,
        }
    }

    /// Changes the number of clips to cut by `delta` (clips found while the batch runs).
    pub fn add_clips(&self, delta: i64) {
        if let Some((_, overall)) = &self.bars {
            let len = overall.length().unwrap_or(0);
            overall.set_length(len.saturating_add_signed(delta));
        }
    }

    /// Prints a line above the bars (or plainly).
    pub fn line(&self, text: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Removes the bars.
    pub fn finish(&self) {
        if let Some((_, overall)) = &self.bars {
            overall.finish();
        }
    }
}

impl FileProgress<'_> {
    /// Clip `index` (0-based) is `fraction` done.
    pub fn clip(&self, index: usize, fraction: f64) {
        if let Some(bar) = &self.bar {
            bar.set_position(
                index as u64 * STEPS_PER_CLIP + (fraction * STEPS_PER_CLIP as f64) as u64,
            );
            bar.set_message(format!("clip {}/{}", index + 1, self.clips));
        }
    }

    /// Clip `index` is finished with `outcome` (a short sentence).
    pub fn clip_done(&self, index: usize, outcome: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position((index as u64 + 1) * STEPS_PER_CLIP);
        }
        if let Some((_, overall)) = &self.progress.bars {
            overall.inc(1);
        }
        self.progress.line(&format!(
            "{} clip {}/{}: {outcome}",
            self.name,
            index + 1,
            self.clips
        ));
    }

    /// The file is finished.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
