//! The samples behind a VM's graphs and sparklines: a ring buffer filled from hangard's stats
//! history, then live, and the scaling of each series. Free of GTK so that it can be tested.

use std::collections::VecDeque;

use hangar_engine::host::stats::Sample;

/// Samples kept per VM for graphs: ten minutes at hangard's default 1 s interval.
pub const HISTORY_LEN: usize = 600;

/// The quantities drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    /// Percent of the VM's vCPUs.
    Cpu,
    /// Bytes of host memory the worker occupies.
    Memory,
    /// Disk read + write, bytes per second.
    Disk,
    /// Network receive + transmit, bytes per second.
    Network,
}

impl Series {
    pub fn value(self, sample: &Sample) -> f64 {
        match self {
            Series::Cpu => sample.cpu_percent,
            Series::Memory => sample.memory_used_bytes as f64,
            Series::Disk => sample.disk_read_bytes_per_s + sample.disk_write_bytes_per_s,
            Series::Network => sample.net_rx_bytes_per_s + sample.net_tx_bytes_per_s,
        }
    }
}

/// A bounded history of samples, oldest first.
#[derive(Clone, Debug)]
pub struct StatsHistory {
    samples: VecDeque<Sample>,
    capacity: usize,
}

impl Default for StatsHistory {
    fn default() -> Self {
        StatsHistory::new(HISTORY_LEN)
    }
}

impl StatsHistory {
    pub fn new(capacity: usize) -> StatsHistory {
        StatsHistory {
            samples: VecDeque::with_capacity(capacity.min(4096)),
            capacity: capacity.max(1),
        }
    }

    /// Adds a sample; one not newer than the last (hangard's history and a live sample can
    /// overlap when the window opens) is dropped.
    pub fn push(&mut self, sample: Sample) {
        if self
            .samples
            .back()
            .is_some_and(|last| sample.time_ms <= last.time_ms)
        {
            return;
        }
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn extend(&mut self, samples: impl IntoIterator<Item = Sample>) {
        for sample in samples {
            self.push(sample);
        }
    }

    pub fn clear(&mut self) {
        self.samples.clear();
    }

    pub fn last(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// The newest `count` values of a series, oldest first.
    pub fn values(&self, series: Series, count: usize) -> Vec<f64> {
        let skip = self.samples.len().saturating_sub(count);
        self.samples
            .iter()
            .skip(skip)
            .map(|s| series.value(s))
            .collect()
    }

    /// The top of the y axis: 100 for CPU; for the others the guest RAM size for memory, or
    /// the peak rounded up to 1, 2 or 5 times a power of ten, so the axis does not jitter.
    pub fn scale_max(&self, series: Series, count: usize) -> f64 {
        match series {
            Series::Cpu => 100.0,
            Series::Memory => {
                let ram = self.last().map_or(0, |s| s.memory_bytes) as f64;
                let peak = self.values(series, count).into_iter().fold(0.0, f64::max);
                nice_ceiling(peak.max(ram))
            }
            _ => nice_ceiling(self.values(series, count).into_iter().fold(0.0, f64::max)),
        }
    }
}

/// The smallest of 1, 2, 5 × 10^n that is ≥ `value` (1 for nothing).
pub fn nice_ceiling(value: f64) -> f64 {
    if value.is_nan() || value <= 1.0 || !value.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * magnitude >= value {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// Points of a polyline for `values` in a `width`×`height` box, the newest at the right edge,
/// `slots` samples across; y grows downwards as in cairo.
pub fn polyline(
    values: &[f64],
    max: f64,
    slots: usize,
    width: f64,
    height: f64,
) -> Vec<(f64, f64)> {
    let slots = slots.max(2);
    let step = width / (slots - 1) as f64;
    let first = slots.saturating_sub(values.len());
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = (first + i) as f64 * step;
            let y = height - (v / max).clamp(0.0, 1.0) * height;
            (x, y)
        })
        .collect()
}

/// A byte count for people: "512 B", "3.2 MiB".
pub fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes.max(0.0);
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", UNITS[0])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(time_ms: u64, cpu: f64) -> Sample {
        Sample {
            time_ms,
            cpu_percent: cpu,
            memory_used_bytes: 10 << 20,
            memory_bytes: 32 << 20,
            disk_read_bytes_per_s: 100.0,
            disk_write_bytes_per_s: 50.0,
            ..Sample::default()
        }
    }

    #[test]
    fn ring_keeps_the_newest_and_drops_overlap() {
        let mut history = StatsHistory::new(3);
        history.extend((1..=5).map(|t| sample(t, t as f64)));
        assert_eq!(history.values(Series::Cpu, 10), [3.0, 4.0, 5.0]);
        history.push(sample(4, 99.0)); // older than the last: an overlap, dropped
        assert_eq!(history.values(Series::Cpu, 10).len(), 3);
        assert_eq!(history.values(Series::Cpu, 2), [4.0, 5.0]);
        assert_eq!(history.values(Series::Disk, 1), [150.0]);
    }

    #[test]
    fn axes_round_to_nice_values() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(150.0), 200.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
        assert_eq!(nice_ceiling(6001.0), 10000.0);
        let mut history = StatsHistory::new(10);
        history.push(sample(1, 50.0));
        assert_eq!(history.scale_max(Series::Cpu, 10), 100.0);
        assert_eq!(history.scale_max(Series::Disk, 10), 200.0);
        assert!(history.scale_max(Series::Memory, 10) >= (32 << 20) as f64);
    }

    #[test]
    fn polyline_puts_the_newest_at_the_right() {
        let points = polyline(&[0.0, 50.0, 100.0], 100.0, 5, 40.0, 10.0);
        assert_eq!(points, [(20.0, 10.0), (30.0, 5.0), (40.0, 0.0)]);
        let clamped = polyline(&[500.0], 100.0, 2, 10.0, 10.0);
        assert_eq!(clamped, [(10.0, 0.0)]);
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(format_bytes(512.0), "512 B");
        assert_eq!(format_bytes(1536.0), "1.5 KiB");
        assert_eq!(format_bytes(3.0 * 1024.0 * 1024.0 * 1024.0), "3.0 GiB");
    }
}
