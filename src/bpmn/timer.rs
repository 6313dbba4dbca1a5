//! BPMN timer definitions (ISO 8601 durations and dates, or FEEL) in
//! baton's notation: `PT30S` is `30s`, a date a CEL time for `wait.until`.

/// An ISO 8601 duration (`PT30S`, `P2D`, `PT1H30M`, `P1W`; FEEL's `=`
/// prefix allowed) in baton's notation (`30s`, `2d`, `1h 30m`).
pub fn duration(text: &str) -> Result<String, String> {
    let t = text.trim();
    let t = t.strip_prefix('=').unwrap_or(t).trim();
    let t = t
        .strip_prefix("duration(\"")
        .and_then(|r| r.strip_suffix("\")"))
        .unwrap_or(t);
    let bad = |why: &str| Err(format!("`{text}` is not translated as a duration: {why}"));
    let Some(rest) = t.strip_prefix('P').or_else(|| t.strip_prefix('p')) else {
        return bad("write an ISO 8601 duration such as PT30S, PT15M, PT4H or P2D");
    };
    let mut parts = Vec::new();
    let mut in_time = false;
    let mut num = String::new();
    for c in rest.chars() {
        match c.to_ascii_uppercase() {
            'T' if !in_time && num.is_empty() => in_time = true,
            d if d.is_ascii_digit() || d == '.' || d == ',' => {
                num.push(if d == ',' { '.' } else { d })
            }
            unit => {
                if num.is_empty() || num.parse::<f64>().is_err() {
                    return bad("a number must come before each unit");
                }
                // Each part keeps the unit the model wrote (PT72H is 72h).
                let part = match (unit, in_time) {
                    ('W', false) => whole(&num, "w"),
                    ('D', false) => whole(&num, "d"),
                    ('Y' | 'M', false) => {
                        return bad("years and months have no fixed length; write days");
                    }
                    ('H', true) => whole(&num, "h"),
                    ('M', true) => whole(&num, "m"),
                    ('S', true) if num.contains('.') => {
                        let ms = (num.parse::<f64>().unwrap_or(0.0) * 1000.0).round() as u64;
                        Some(format!("{ms}ms"))
                    }
                    ('S', true) => whole(&num, "s"),
                    _ => {
                        return bad("write an ISO 8601 duration such as PT30S, PT15M, PT4H or P2D");
                    }
                };
                match part {
                    Some(p) => parts.push(p),
                    None => return bad("only seconds may have a fraction"),
                }
                num.clear();
            }
        }
    }
    if !num.is_empty() || parts.is_empty() {
        return bad("write an ISO 8601 duration such as PT30S, PT15M, PT4H or P2D");
    }
    Ok(parts.join(" "))
}

/// `<n><unit>` for a whole number `n`.
fn whole(num: &str, unit: &str) -> Option<String> {
    num.parse::<u64>().ok().map(|n| format!("{n}{unit}"))
}

/// A timer date as a CEL time: an RFC 3339 literal, or FEEL (`=dueDate`).
pub fn date(text: &str) -> Result<String, String> {
    let t = text.trim();
    if let Some(feel) = t.strip_prefix('=') {
        return super::feel::to_cel(feel).map_err(|e| e.to_string());
    }
    if crate::engine::parse_rfc3339(t).is_some() {
        return Ok(format!("'{t}'"));
    }
    Err(format!(
        "`{t}` is not translated as a date: write an RFC 3339 time (2026-01-05T09:00:00Z) or a FEEL expression (=dueDate)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_durations_keep_the_units_the_model_wrote() {
        let cases = [
            ("PT30S", Ok("30s")),
            ("PT15M", Ok("15m")),
            ("PT4H", Ok("4h")),
            ("P2D", Ok("2d")),
            ("P1W", Ok("1w")),
            ("PT72H", Ok("72h")),
            ("PT1.5H", Err("only seconds")),
            ("PT1H30M", Ok("1h 30m")),
            ("P1DT12H", Ok("1d 12h")),
            ("PT0.5S", Ok("500ms")),
            ("=PT72H", Ok("72h")),
            ("=duration(\"PT5M\")", Ok("5m")),
            ("P1M", Err("no fixed length")),
            ("P1Y", Err("no fixed length")),
            ("30s", Err("ISO 8601")),
            ("PT", Err("ISO 8601")),
            ("PTS", Err("a number")),
            ("PT5", Err("ISO 8601")),
        ];
        for (iso, want) in cases {
            match (duration(iso), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, w, "{iso}"),
                (Err(got), Err(w)) => assert!(got.contains(w), "{iso}: {got}"),
                (got, w) => panic!("{iso}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn dates_are_rfc_3339_literals_or_feel() {
        assert_eq!(
            date("2026-01-05T09:00:00Z").as_deref(),
            Ok("'2026-01-05T09:00:00Z'")
        );
        assert_eq!(date("=dueDate").as_deref(), Ok("vars.dueDate"));
        assert!(date("tomorrow").is_err_and(|e| e.contains("RFC 3339")));
    }
}
