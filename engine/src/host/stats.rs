//! Stats: raw counters sampled from each worker turned into rates, and a ring buffer of them per
//! VM so that a client opening late still draws a full graph.
//!
//! Pure: the sampler thread lives in the inventory; this module only does the arithmetic.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use zvariant::Type;

/// Samples kept per VM: ten minutes at the default 1 s interval.
pub const DEFAULT_HISTORY_LEN: usize = 600;

/// Monotonic counters read from a worker at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counters {
    /// Monotonic clock of the reading, in nanoseconds.
    pub at_ns: u64,
    /// CPU time of all vCPU threads together.
    pub cpu_time_ns: u64,
    pub vcpus: u32,
    /// Host memory the worker occupies (resident set).
    pub memory_used_bytes: u64,
    /// Guest RAM size.
    pub memory_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

impl Counters {
    /// The counters of a worker's `stats` reply, read at `at_ns`; `resident_bytes` is the
    /// worker's resident set, the memory used when the guest reports nothing itself.
    pub fn from_worker(stats: &crate::protocol::Stats, at_ns: u64, resident_bytes: u64) -> Self {
        // The guest's own view (virtio-balloon) says what it uses, where the resident set also
        // counts pages the guest has freed.
        let memory_used_bytes = stats
            .balloon
            .as_ref()
            .filter(|b| b.total_bytes > 0)
            .map(|b| b.total_bytes.saturating_sub(b.available_bytes))
            .unwrap_or(resident_bytes);
        Counters {
            at_ns,
            cpu_time_ns: stats.vcpus.iter().map(|v| v.cpu_time_ns).sum(),
            vcpus: stats.vcpus.len() as u32,
            memory_used_bytes,
            memory_bytes: stats.memory_bytes,
            disk_read_bytes: stats.disks.iter().map(|d| d.read_bytes).sum(),
            disk_write_bytes: stats.disks.iter().map(|d| d.write_bytes).sum(),
            net_rx_bytes: stats.nets.iter().map(|n| n.rx_bytes).sum(),
            net_tx_bytes: stats.nets.iter().map(|n| n.tx_bytes).sum(),
        }
    }
}

/// One point of a VM's graphs. On D-Bus it is the struct `(tdttdddd)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, Type)]
pub struct Sample {
    /// Wall-clock time of the sample, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// CPU use of the VM's vCPUs, 0–100 % of what its vCPUs could use together.
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_bytes: u64,
    pub disk_read_bytes_per_s: f64,
    pub disk_write_bytes_per_s: f64,
    pub net_rx_bytes_per_s: f64,
    pub net_tx_bytes_per_s: f64,
}

/// A counter's growth between two readings. A counter that went backwards was restarted (the
/// guest was reset and its vCPU threads are new), so it counts from zero.
fn growth(previous: u64, current: u64) -> u64 {
    if current >= previous {
        current - previous
    } else {
        current
    }
}

/// The sample between two readings of the same VM.
pub fn sample_between(previous: &Counters, current: &Counters, time_ms: u64) -> Sample {
    let elapsed_ns = current.at_ns.saturating_sub(previous.at_ns);
    let rate = |before: u64, after: u64| {
        if elapsed_ns == 0 {
            0.0
        } else {
            growth(before, after) as f64 * 1e9 / elapsed_ns as f64
        }
    };
    let cpu_capacity_ns = elapsed_ns as f64 * f64::from(current.vcpus.max(1));
    let cpu_percent = if elapsed_ns == 0 {
        0.0
    } else {
        (growth(previous.cpu_time_ns, current.cpu_time_ns) as f64 * 100.0 / cpu_capacity_ns)
            .clamp(0.0, 100.0)
    };
    Sample {
        time_ms,
        cpu_percent,
        memory_used_bytes: current.memory_used_bytes,
        memory_bytes: current.memory_bytes,
        disk_read_bytes_per_s: rate(previous.disk_read_bytes, current.disk_read_bytes),
        disk_write_bytes_per_s: rate(previous.disk_write_bytes, current.disk_write_bytes),
        net_rx_bytes_per_s: rate(previous.net_rx_bytes, current.net_rx_bytes),
        net_tx_bytes_per_s: rate(previous.net_tx_bytes, current.net_tx_bytes),
    }
}

/// The recent samples of one VM, oldest first.
#[derive(Clone, Debug)]
pub struct StatsHistory {
    capacity: usize,
    samples: VecDeque<Sample>,
    last: Option<Counters>,
}

impl StatsHistory {
    pub fn new(capacity: usize) -> StatsHistory {
        StatsHistory {
            capacity: capacity.max(1),
            samples: VecDeque::with_capacity(capacity.max(1)),
            last: None,
        }
    }

    /// Takes a reading. The first reading after [`StatsHistory::restart`] only sets the baseline;
    /// every later one adds a sample, dropping the oldest when full.
    pub fn record(&mut self, counters: Counters, time_ms: u64) -> Option<Sample> {
        let sample = self
            .last
            .as_ref()
            .map(|previous| sample_between(previous, &counters, time_ms));
        self.last = Some(counters);
        if let Some(sample) = sample {
            if self.samples.len() == self.capacity {
                self.samples.pop_front();
            }
            self.samples.push_back(sample);
        }
        sample
    }

    /// Forgets the baseline (the worker stopped); the samples stay for the graph.
    pub fn restart(&mut self) {
        self.last = None;
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn worker_stats_sum_the_devices_and_prefer_the_guests_memory_view() {
        let stats: crate::protocol::Stats = serde_json::from_value(serde_json::json!({
            "state": "running",
            "memory_bytes": 256u64 << 20,
            "vcpus": [
                {"id": 0, "cpu_time_ns": 10, "exits": {"io": 0, "mmio": 0, "hlt": 0, "other": 0}},
                {"id": 1, "cpu_time_ns": 5, "exits": {"io": 0, "mmio": 0, "hlt": 0, "other": 0}}
            ],
            "disks": [
                {"path": "/a", "read_bytes": 100, "write_bytes": 1, "read_requests": 1,
                 "write_requests": 1, "flushes": 0, "errors": 0},
                {"path": "/b", "read_bytes": 20, "write_bytes": 2, "read_requests": 1,
                 "write_requests": 1, "flushes": 0, "errors": 0}
            ],
            "nets": [{"rx_bytes": 7, "rx_packets": 1, "tx_bytes": 9, "tx_packets": 1,
                      "rx_dropped": 0, "tx_dropped": 0}]
        }))
        .unwrap();
        let counters = Counters::from_worker(&stats, 1, 4096);
        assert_eq!((counters.cpu_time_ns, counters.vcpus), (15, 2));
        assert_eq!(
            (counters.disk_read_bytes, counters.disk_write_bytes),
            (120, 3)
        );
        assert_eq!((counters.net_rx_bytes, counters.net_tx_bytes), (7, 9));
        assert_eq!(
            counters.memory_used_bytes, 4096,
            "no balloon: the resident set"
        );
        let mut with_balloon = stats.clone();
        with_balloon.balloon = Some(crate::protocol::BalloonStats {
            total_bytes: 1000,
            available_bytes: 300,
            ..Default::default()
        });
        let counters = Counters::from_worker(&with_balloon, 1, 4096);
        assert_eq!(counters.memory_used_bytes, 700);
    }

    fn reading(at_s: u64, cpu_ns: u64, vcpus: u32) -> Counters {
        Counters {
            at_ns: at_s * SECOND,
            cpu_time_ns: cpu_ns,
            vcpus,
            memory_used_bytes: 10 << 20,
            memory_bytes: 256 << 20,
            ..Default::default()
        }
    }

    #[test]
    fn cpu_percent_is_relative_to_the_vcpus() {
        let sample = sample_between(&reading(0, 0, 1), &reading(1, SECOND / 2, 1), 7);
        assert!((sample.cpu_percent - 50.0).abs() < 1e-9);
        let sample = sample_between(&reading(0, 0, 2), &reading(1, SECOND / 2, 2), 7);
        assert!((sample.cpu_percent - 25.0).abs() < 1e-9);
        assert_eq!(sample.time_ms, 7);
        assert_eq!(sample.memory_used_bytes, 10 << 20);
    }

    #[test]
    fn rates_are_per_second_and_clamped() {
        let mut before = reading(0, 0, 1);
        before.disk_read_bytes = 1000;
        let mut after = reading(2, 5 * SECOND, 1);
        after.disk_read_bytes = 5000;
        after.net_tx_bytes = 300;
        let sample = sample_between(&before, &after, 0);
        assert_eq!(sample.disk_read_bytes_per_s, 2000.0);
        assert_eq!(sample.net_tx_bytes_per_s, 150.0);
        assert_eq!(sample.cpu_percent, 100.0);
    }

    #[test]
    fn restarted_counters_and_zero_intervals_do_not_go_negative() {
        let sample = sample_between(&reading(0, 9 * SECOND, 1), &reading(1, SECOND / 4, 1), 0);
        assert!((sample.cpu_percent - 25.0).abs() < 1e-9);
        let sample = sample_between(&reading(1, 0, 1), &reading(1, SECOND, 1), 0);
        assert_eq!(sample.cpu_percent, 0.0);
    }

    #[test]
    fn the_history_is_a_ring() {
        let mut history = StatsHistory::new(3);
        assert!(history.record(reading(0, 0, 1), 0).is_none());
        for second in 1..=5 {
            history.record(reading(second, second * SECOND / 10, 1), second * 1000);
        }
        let times: Vec<u64> = history.samples().map(|s| s.time_ms).collect();
        assert_eq!(times, [3000, 4000, 5000]);
        assert!((history.latest().unwrap().cpu_percent - 10.0).abs() < 1e-9);

        history.restart();
        assert!(history.record(reading(9, 0, 1), 9000).is_none());
        assert_eq!(history.len(), 3);
    }
}
