//! Progress bars (indicatif) for the image commands' long steps: shown
//! only where stderr is a terminal and `--quiet` is not given.

use std::os::fd::AsFd;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use plyfs_image::{Progress, Step};

pub struct Bars {
    multi: Option<MultiProgress>,
}

impl Bars {
    pub fn new(quiet: bool) -> Bars {
        let tty = plyfs_sys::fs::is_terminal(std::io::stderr().as_fd());
        Bars {
            multi: (!quiet && tty)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
        }
    }
}

struct Bar(ProgressBar);

impl Step for Bar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
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
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        // Steps shorter than this never draw.
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        Box::new(Bar(multi.add(bar)))
    }
}
