//! Progress bars (indicatif) for the image commands' long steps: shown
//! only where stderr is a terminal and `--quiet` is not given.

use std::os::fd::AsFd;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use plyfs_image::{Progress, Step};

pub struct Bars {
    multi: Option<MultiProgress>,
}

impl Bars {
    /// A line of its own, above the bars (printed between them, a line
    /// would break their drawing).
    #[allow(dead_code)] // plyfs-registry's; plyfs prints its own lines
    pub fn note(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                if m.println(line).is_err() {
                    eprintln!("{line}");
                }
            }
            None => eprintln!("{line}"),
        }
    }

    pub fn new(quiet: bool) -> Bars {
        let tty = plyfs_sys::fs::is_terminal(std::io::stderr().as_fd());
        Bars {
            multi: (!quiet && tty)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }
}

struct Bar {
    bar: ProgressBar,
    multi: MultiProgress,
}

impl Step for Bar {
    fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        // Out of the set too: a cleared bar left in it keeps its line.
        self.multi.remove(&self.bar);
    }
}

impl Progress for Bars {
    fn step(&self, what: &str, total: Option<u64>, bytes: bool) -> Box<dyn Step> {
        let Some(multi) = &self.multi else {
            return Box::new(plyfs_image::Quiet);
        };
        let (bar, template) = match (total, bytes) {
            (Some(t), true) => (
                ProgressBar::new(t),
                "{msg:24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
            ),
            (Some(t), false) => (ProgressBar::new(t), "{msg:24} [{bar:30}] {pos}/{len}"),
            (None, true) => (ProgressBar::no_length(), "{spinner} {msg:24} {bytes}"),
            (None, false) => (ProgressBar::no_length(), "{spinner} {msg:24} {pos} entries"),
        };
        // Into the set before anything draws it: a bar drawn on its own
        // first (set_message draws) leaves that line behind the others.
        let bar = multi.add(bar);
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        // Steps shorter than this never draw.
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Box::new(Bar {
            bar,
            multi: multi.clone(),
        })
    }
}
