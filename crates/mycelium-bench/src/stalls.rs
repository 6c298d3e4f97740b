//! `mycelium bench stalls`: how much of the time this machine takes away from a thread that never
//! blocks. One thread per CPU spins reading the clock; every gap between two readings longer than
//! 100 us is time the thread was not running (host preemption on a virtual machine, interrupts,
//! other processes). No broker is involved: it is the floor under every tail-latency figure
//! measured on the same machine. A p99 cannot be lower than the stalls that hit 1% of the
//! messages, for any system.

use std::time::{Duration, Instant};

use serde::Serialize;

/// The longest a probe may spin (seconds).
pub const DURATION_MAX_S: f64 = 3600.0;

/// Gaps at least this long are counted.
const THRESHOLDS_US: [u64; 4] = [100, 500, 1_000, 2_000];

/// What one spinning thread saw.
#[derive(Debug, Clone, Serialize)]
pub struct Stalls {
    /// The thread (one per CPU).
    pub thread: usize,
    /// Seconds it spun.
    pub duration_s: f64,
    /// Gaps of at least 0.1, 0.5, 1 and 2 ms: how many.
    pub gaps: [u64; 4],
    /// Time lost in those gaps, percent of the run (for each threshold).
    pub lost_percent: [f64; 4],
    /// The longest gap, microseconds.
    pub longest_us: u64,
}

/// Spins one thread per CPU (`threads`) for `duration` and reports each thread's stalls.
///
/// # Errors
/// A thread that cannot be started.
pub fn run(threads: usize, duration: Duration) -> anyhow::Result<Vec<Stalls>> {
    let handles = (0..threads.max(1))
        .map(|thread| {
            std::thread::Builder::new()
                .name(format!("stalls-{thread}"))
                .spawn(move || spin(thread, duration))
        })
        .collect::<Result<Vec<_>, _>>()?;
    handles
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a spinning thread panicked"))
        })
        .collect()
}

fn spin(thread: usize, duration: Duration) -> Stalls {
    let started = Instant::now();
    let mut last = started;
    let mut gaps = [0u64; 4];
    let mut lost_us = [0u64; 4];
    let mut longest_us = 0;
    while last.duration_since(started) < duration {
        let now = Instant::now();
        let gap_us = u64::try_from(now.duration_since(last).as_micros()).unwrap_or(u64::MAX);
        if gap_us >= THRESHOLDS_US[0] {
            for (i, threshold) in THRESHOLDS_US.iter().enumerate() {
                if gap_us >= *threshold {
                    gaps[i] += 1;
                    lost_us[i] += gap_us;
                }
            }
            longest_us = longest_us.max(gap_us);
        }
        last = now;
    }
    let run_us = last.duration_since(started).as_micros().max(1) as f64;
    Stalls {
        thread,
        duration_s: run_us / 1e6,
        gaps,
        lost_percent: lost_us.map(|us| us as f64 * 100.0 / run_us),
        longest_us,
    }
}

/// The table `mycelium bench stalls` prints.
pub fn table(results: &[Stalls]) -> String {
    let mut out = format!(
        "{:<7} {:>9} {:>9} {:>9} {:>9} {:>13} {:>13} {:>11}\n",
        "thread", ">=0.1 ms", ">=0.5 ms", ">=1 ms", ">=2 ms", "lost >=0.1ms", "lost >=1 ms", "longest ms"
    );
    for s in results {
        out.push_str(&format!(
            "{:<7} {:>9} {:>9} {:>9} {:>9} {:>12.2}% {:>12.2}% {:>11.2}\n",
            s.thread,
            s.gaps[0],
            s.gaps[1],
            s.gaps[2],
            s.gaps[3],
            s.lost_percent[0],
            s.lost_percent[2],
            s.longest_us as f64 / 1000.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_nested_and_the_time_adds_up() {
        let results = run(2, Duration::from_millis(50)).unwrap();
        assert_eq!(results.len(), 2);
        for s in &results {
            assert!(s.duration_s >= 0.05, "{s:?}");
            // A gap of >= 2 ms is also one of >= 1 ms, and so on.
            assert!(s.gaps.windows(2).all(|w| w[0] >= w[1]), "{s:?}");
            assert!(s.lost_percent.windows(2).all(|w| w[0] >= w[1]), "{s:?}");
            assert!(s.lost_percent[0] <= 100.0, "{s:?}");
            if s.gaps[0] == 0 {
                assert_eq!(s.longest_us, 0);
            } else {
                assert!(s.longest_us >= 100, "{s:?}");
            }
        }
        assert!(table(&results).lines().count() == 3);
    }
}
