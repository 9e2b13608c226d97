//! What a process holds, read from `/proc/<pid>`.

use std::time::Instant;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was read.
    pub at: Instant,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: usize,
    /// User + system CPU time so far, seconds.
    pub cpu_s: f64,
}

impl Sample {
    /// Reads process `pid`; `None` once it is gone.
    pub fn read(pid: u32) -> Option<Self> {
        let at = Instant::now();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rss_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())?;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.count();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces, inside parentheses): utime and
        // stime are fields 14 and 15 of the whole line, 12 and 13 after ") ".
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        Some(Sample {
            at,
            rss_bytes: rss_kb * 1024,
            fds,
            threads,
            cpu_s: ticks as f64 / hz,
        })
    }

    /// RSS in MB (10^6 bytes).
    pub fn rss_mb(&self) -> f64 {
        self.rss_bytes as f64 / 1e6
    }

    /// CPU use between `earlier` and this sample, in % of one core.
    pub fn cpu_percent_since(&self, earlier: &Sample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        100.0 * (self.cpu_s - earlier.cpu_s) / wall
    }
}
