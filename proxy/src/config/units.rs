//! Human units in the configuration: durations (`500ms`, `2s`, `5m`, `1h`, `1.5s`).

use std::time::Duration;

/// Parses a duration with a unit: `ms`, `s`, `m` or `h`; fractions allowed (`1.5s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let expected =
        || format!("expected a duration like `500ms`, `2s`, `5m` or `1h`, found `{text}`");
    let value: f64 = number.parse().map_err(|_| expected())?;
    let seconds_per_unit = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(expected()),
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| expected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "5 parsecs", "-1s", "1..2s", "1e999s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
    }
}
