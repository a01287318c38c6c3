//! The one duration syntax of every binary: humantime strings (`"250ms"`, `"30s"`,
//! `"5m"`, `"1h 30m"`). Keys counted in a unit by their name (`*_ms`: milliseconds,
//! `*_s`: seconds) keep taking a bare integer of that unit, as they always did, and also
//! take a duration string that is a whole number of the unit.

use std::time::Duration;

/// The unit a key is counted in, from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Millis,
    Seconds,
}

impl Unit {
    /// `*_ms` → milliseconds, `*_s` → seconds; any other name is not counted in a unit.
    pub fn of_key(key: &str) -> Option<Unit> {
        let last = key.rsplit('.').next().unwrap_or(key);
        if last.ends_with("_ms") {
            Some(Unit::Millis)
        } else if last.ends_with("_s") {
            Some(Unit::Seconds)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Millis => "milliseconds",
            Unit::Seconds => "seconds",
        }
    }
}

/// A duration string. A bare number is refused: without a unit it is ambiguous (the keys
/// that take one say their unit in their name and go through [`to_units`]).
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("an empty duration (write e.g. \"250ms\", \"30s\", \"5m\")".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{t:?} has no unit (write e.g. \"{t}ms\" or \"{t}s\")"
        ));
    }
    humantime::parse_duration(t).map_err(|e| {
        format!("{t:?} is not a duration ({e}); write e.g. \"250ms\", \"30s\", \"5m\"")
    })
}

/// A value of a key counted in `unit`: a bare integer (the unit's count, as before) or a
/// duration string that is a whole number of the unit (`"2s"` is 2000 for a `*_ms` key;
/// `"1500ms"` is refused for a `*_s` key rather than silently rounded).
pub fn to_units(text: &str, unit: Unit) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let d = parse(t)?;
    let (n, rest) = match unit {
        Unit::Millis => (d.as_millis(), d.subsec_nanos() % 1_000_000),
        Unit::Seconds => (u128::from(d.as_secs()), d.subsec_nanos()),
    };
    if rest != 0 {
        return Err(format!("{t:?} is not a whole number of {}", unit.name()));
    }
    u64::try_from(n).map_err(|_| format!("{t:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humantime_strings_and_legacy_integers() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse(" 5m ").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse("30").unwrap_err().contains("no unit"));
        assert!(parse("").is_err());
        assert!(parse("5 parsecs").unwrap_err().contains("not a duration"));
        assert_eq!(to_units("1500", Unit::Millis).unwrap(), 1500);
        assert_eq!(to_units("2s", Unit::Millis).unwrap(), 2000);
        assert_eq!(to_units("48h", Unit::Seconds).unwrap(), 172_800);
        assert!(to_units("1500ms", Unit::Seconds)
            .unwrap_err()
            .contains("whole number of seconds"));
        assert!(to_units("1us", Unit::Millis).is_err());
        assert!(to_units("-5", Unit::Millis).is_err());
    }

    #[test]
    fn the_unit_comes_from_the_key_name() {
        assert_eq!(Unit::of_key("batch.max_wait_ms"), Some(Unit::Millis));
        assert_eq!(Unit::of_key("redis_retention_live_s"), Some(Unit::Seconds));
        assert_eq!(Unit::of_key("edge_lb.health.interval"), None);
        // Only the last segment counts.
        assert_eq!(Unit::of_key("x_ms.y"), None);
    }

    /// Fuzz-style: arbitrary strings (random bytes made UTF-8, and mutations of valid
    /// durations) never panic, and whatever parses is consistent between the two entry
    /// points. Deterministic (fixed seed) and bounded.
    #[test]
    fn never_panics_on_arbitrary_strings() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // xorshift64*: enough randomness for this, no dependency.
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let seeds = [
            "250ms",
            "30s",
            "5m",
            "1h 30m",
            "2days",
            "18446744073709551615s",
            "1y",
            "0ns",
            "99999999999999999999999h",
            "1.5s",
            "5 m",
            "+5s",
            "-5s",
            "1e9s",
            "µs",
        ];
        let alphabet: Vec<char> = "0123456789 msuhdywnµ.+-_eEabc\u{0}\u{10FFFF}日"
            .chars()
            .collect();
        let mut checked = 0;
        for i in 0..60_000 {
            let s: String = if i % 2 == 0 {
                let len = (next() % 24) as usize;
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            } else {
                let mut s: Vec<char> = seeds[(next() % seeds.len() as u64) as usize]
                    .chars()
                    .collect();
                for _ in 0..(next() % 4) {
                    let c = alphabet[(next() % alphabet.len() as u64) as usize];
                    let at = (next() % (s.len() as u64 + 1)) as usize;
                    match next() % 3 {
                        0 => s.insert(at, c),
                        1 if at < s.len() => {
                            s.remove(at);
                        }
                        _ if at < s.len() => s[at] = c,
                        _ => s.push(c),
                    }
                }
                s.into_iter().collect()
            };
            let d = parse(&s);
            let ms = to_units(&s, Unit::Millis);
            let secs = to_units(&s, Unit::Seconds);
            if let (Ok(d), Ok(ms)) = (&d, &ms) {
                assert_eq!(d.as_millis(), u128::from(*ms), "{s:?}");
            }
            // A bare integer is a count of the key's own unit; otherwise the two units
            // must agree on the same duration.
            if let (true, Ok(ms), Ok(secs)) = (d.is_ok(), ms, secs) {
                assert_eq!(u128::from(ms), u128::from(secs) * 1000, "{s:?}");
            }
            checked += 1;
        }
        assert_eq!(checked, 60_000);
    }
}
