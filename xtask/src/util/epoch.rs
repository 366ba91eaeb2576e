//! Time as the image knows it: SOURCE_DATE_EPOCH, never the wall clock, and the calendar dates FAT and
//! SPDX store.

use super::cmd::cmd;
use anyhow::{Context, Result};

/// SOURCE_DATE_EPOCH, else the time of the repository's HEAD commit. Never the wall clock.
pub fn source_date_epoch() -> Result<i64> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value.trim().parse().with_context(|| {
            format!("environment variable SOURCE_DATE_EPOCH={value:?} is not a whole number of seconds")
        });
    }
    let out = cmd("git")
        .args(["log", "-1", "--format=%ct"])
        .dir(super::paths::repo_root())
        .read()
        .context("SOURCE_DATE_EPOCH is not set and the commit time could not be read; set SOURCE_DATE_EPOCH")?;
    out.trim().parse().with_context(|| format!("git printed {out:?} as the commit time"))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm):
/// SOURCE_DATE_EPOCH turned into the calendar dates FAT and SPDX store.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
