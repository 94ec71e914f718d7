//! The CMOS real-time clock at ports 0x70/0x71, reading the host's UTC time, so that the
//! guest's clock is right from boot.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{MachineRequest, PioDevice};
use crate::arch::x86_64::acpi::CMOS_CENTURY_INDEX;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
/// Register B: 24-hour mode, binary (not BCD) data.
const B_24H: u8 = 1 << 1;
const B_BINARY: u8 = 1 << 2;
/// Register D: the RTC has power and its RAM is valid.
const D_VALID: u8 = 1 << 7;
/// Register A: 32.768 kHz time base, 1024 Hz periodic rate.
const A_DEFAULT: u8 = 0x26;

/// A calendar time in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalendarTime {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// 1 = Sunday, as the RTC counts.
    pub weekday: u8,
}

impl CalendarTime {
    /// Converts seconds since the Unix epoch to a proleptic Gregorian UTC date.
    pub fn from_unix(seconds: i64) -> CalendarTime {
        let days = seconds.div_euclid(86_400);
        let secs = seconds.rem_euclid(86_400);
        // Days since 0000-03-01, in 400-year eras (Howard Hinnant's civil-from-days).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        CalendarTime {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
            // 1970-01-01 was a Thursday (5 when Sunday is 1).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
        }
    }
}

fn to_bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// The CMOS: 128 bytes of RAM with the clock registers computed on read.
pub struct Cmos {
    index: u8,
    ram: [u8; 128],
    clock: fn() -> i64,
}

fn host_clock() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Default for Cmos {
    fn default() -> Self {
        Cmos::with_clock(host_clock)
    }
}

impl Cmos {
    /// A CMOS reading time from `clock` (seconds since the epoch); tests pass a fixed clock.
    pub fn with_clock(clock: fn() -> i64) -> Self {
        let mut ram = [0u8; 128];
        ram[REG_A as usize] = A_DEFAULT;
        ram[REG_B as usize] = B_24H;
        ram[REG_D as usize] = D_VALID;
        Cmos {
            index: 0,
            ram,
            clock,
        }
    }

    fn register(&self, index: u8) -> u8 {
        let now = CalendarTime::from_unix((self.clock)());
        let mode = self.ram[REG_B as usize];
        let encode = |value: u8| {
            if mode & B_BINARY != 0 {
                value
            } else {
                to_bcd(value)
            }
        };
        match index {
            REG_SECONDS => encode(now.second),
            REG_MINUTES => encode(now.minute),
            REG_HOURS if mode & B_24H != 0 => encode(now.hour),
            REG_HOURS => {
                let hour12 = match now.hour % 12 {
                    0 => 12,
                    h => h,
                };
                encode(hour12) | if now.hour >= 12 { 0x80 } else { 0 }
            }
            REG_WEEKDAY => encode(now.weekday),
            REG_DAY => encode(now.day),
            REG_MONTH => encode(now.month),
            REG_YEAR => encode(now.year.rem_euclid(100) as u8),
            i if i == CMOS_CENTURY_INDEX => encode(now.year.div_euclid(100) as u8),
            // No update ever in progress: the value is computed whole on each read.
            REG_A => self.ram[REG_A as usize] & 0x7f,
            // Reading C acknowledges interrupts; none are generated.
            REG_C => 0,
            i => self.ram[i as usize & 0x7f],
        }
    }
}

impl PioDevice for Cmos {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0);
        data[0] = match offset {
            0 => self.index,
            _ => self.register(self.index),
        };
    }

    fn write(&mut self, offset: u16, data: &[u8]) -> Option<MachineRequest> {
        match offset {
            // Bit 7 masks NMIs on real hardware; the index is the low seven bits.
            0 => self.index = data[0] & 0x7f,
            // The clock follows the host; writes to the time registers are not kept.
            _ if self.index <= REG_YEAR || self.index == CMOS_CENTURY_INDEX => {}
            _ if self.index == REG_C || self.index == REG_D => {}
            _ => self.ram[self.index as usize] = data[0],
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_unix_time_to_calendar_dates() {
        let epoch = CalendarTime::from_unix(0);
        assert_eq!((epoch.year, epoch.month, epoch.day), (1970, 1, 1));
        assert_eq!(epoch.weekday, 5);
        // 2000-02-29 12:34:56 UTC, a Tuesday.
        let leap = CalendarTime::from_unix(951_827_696);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        assert_eq!((leap.hour, leap.minute, leap.second), (12, 34, 56));
        assert_eq!(leap.weekday, 3);
        // 2026-11-22 00:00:00 UTC, a Sunday.
        let day = CalendarTime::from_unix(1_795_305_600);
        assert_eq!((day.year, day.month, day.day), (2026, 11, 22));
        assert_eq!(day.weekday, 1);
    }

    fn read(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(0, &[index]);
        let mut data = [0u8];
        cmos.read(1, &mut data);
        data[0]
    }

    #[test]
    fn reads_bcd_by_default_and_binary_when_asked() {
        let mut cmos = Cmos::with_clock(|| 951_827_696);
        assert_eq!(read(&mut cmos, REG_YEAR), 0x00);
        assert_eq!(read(&mut cmos, CMOS_CENTURY_INDEX), 0x20);
        assert_eq!(read(&mut cmos, REG_MONTH), 0x02);
        assert_eq!(read(&mut cmos, REG_DAY), 0x29);
        assert_eq!(read(&mut cmos, REG_HOURS), 0x12);
        assert_eq!(read(&mut cmos, REG_SECONDS), 0x56);
        assert_eq!(read(&mut cmos, REG_D), D_VALID);
        cmos.write(0, &[REG_B]);
        cmos.write(1, &[B_24H | B_BINARY]);
        assert_eq!(read(&mut cmos, REG_DAY), 29);
        assert_eq!(read(&mut cmos, REG_SECONDS), 56);
    }

    #[test]
    fn twelve_hour_mode_sets_the_pm_bit() {
        let mut cmos = Cmos::with_clock(|| 951_827_696);
        cmos.write(0, &[REG_B]);
        cmos.write(1, &[0]);
        assert_eq!(read(&mut cmos, REG_HOURS), 0x80 | 0x12);
    }

    #[test]
    fn nvram_keeps_what_the_guest_stores() {
        let mut cmos = Cmos::with_clock(|| 0);
        cmos.write(0, &[0x80 | 0x40]);
        cmos.write(1, &[0xab]);
        assert_eq!(read(&mut cmos, 0x40), 0xab);
    }
}
