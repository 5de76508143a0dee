//! The wall clock as every crate reads it: Unix seconds. One function, so that a test clock or
//! a change of representation is one edit.

/// Seconds since 1970-01-01 UTC; 0 if the system clock is set before that.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
