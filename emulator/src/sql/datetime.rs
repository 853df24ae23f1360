//! Spark's datetime patterns (`yyyy-MM-dd HH:mm:ss`, `yyyy-MM-dd'T'HH:mm:ss.SSS`, `EEE`, `MMM`,
//! `hh:mm a`, ...), which Databricks' `date_format`, `to_timestamp`, `try_to_timestamp`,
//! `to_date`, `from_unixtime`, `unix_timestamp` and `to_unix_timestamp` take instead of
//! DataFusion's chrono patterns (`%Y`).
//!
//! A pattern is checked as Spark checks it (week-based letters, unsupported letters, too many
//! letters) and then read the way Java's `DateTimeFormatter` reads one: runs of a letter are
//! fields, `'...'` is literal text (`''` a quote), `[...]` an optional section, and any other
//! character is itself. Formatting and parsing happen in the session time zone, which on the
//! emulator is always UTC. Not supported: the zone letters `V` and `z` when parsing, `V` and the
//! Java-only letters `v` and `g` at all (UNSUPPORTED_FEATURE).

use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::compute::{CastOptions, cast, cast_with_options};
use datafusion::arrow::datatypes::{DataType, TimestampMicrosecondType};
use datafusion::common::{DataFusionError, Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::{SqlError, types};

pub(super) fn functions() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(DateFormat::new()),
        ScalarUDF::from(ParseDatetime::new(Parse::Timestamp)),
        ScalarUDF::from(ParseDatetime::new(Parse::TryTimestamp)),
        ScalarUDF::from(ParseDatetime::new(Parse::Date)),
        ScalarUDF::from(FromUnixtime::new()),
        ScalarUDF::from(UnixTimestamp::new("unix_timestamp")),
        ScalarUDF::from(UnixTimestamp::new("to_unix_timestamp")),
    ]
}

/// The pattern `from_unixtime` and `unix_timestamp` use when given none.
const DEFAULT_PATTERN: &str = "yyyy-MM-dd HH:mm:ss";

/// A pattern field: the letter's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Era,
    Year,
    DayOfYear,
    Month,
    Day,
    Quarter,
    DayOfWeek,
    AlignedDayOfWeekInMonth,
    AmPm,
    ClockHourOfAmPm,
    HourOfAmPm,
    ClockHourOfDay,
    HourOfDay,
    Minute,
    Second,
    Fraction,
    ZoneName,
    OffsetO,
    OffsetUpperX,
    OffsetLowerX,
    OffsetZ,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Literal(String),
    Field(Field, usize),
    Optional(Vec<Item>),
}

/// A compiled Spark datetime pattern.
#[derive(Clone, Debug)]
pub(super) struct Pattern {
    items: Vec<Item>,
    /// `G` appears, so `y` is the year of era rather than the proleptic year.
    era: bool,
}

fn invalid(pattern: &str) -> SqlError {
    SqlError::new(
        "INVALID_DATETIME_PATTERN.WITH_SUGGESTION",
        "22007",
        format!(
            "Unrecognized datetime pattern: {pattern}. You can form a valid datetime pattern \
             with the guide from 'https://docs.databricks.com/sql/language-manual/\
             sql-ref-datetime-pattern.html'."
        ),
    )
}

impl Pattern {
    /// Checks and reads `pattern`; `parsing` adds the letters Spark refuses for parsing.
    pub(super) fn compile(pattern: &str, parsing: bool) -> Result<Self, SqlError> {
        spark_checks(pattern, parsing)?;
        let chars: Vec<char> = pattern.chars().collect();
        let mut stack: Vec<Vec<Item>> = vec![Vec::new()];
        let mut era = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c.is_ascii_alphabetic() {
                let count = chars[i..].iter().take_while(|&&d| d == c).count();
                let field = field(c, count, parsing).ok_or_else(|| invalid(pattern))??;
                era |= field == Field::Era;
                stack
                    .last_mut()
                    .expect("a section is open")
                    .push(Item::Field(field, count));
                i += count;
                continue;
            }
            match c {
                '\'' => {
                    let mut text = String::new();
                    if chars.get(i + 1) == Some(&'\'') {
                        text.push('\'');
                        i += 2;
                    } else {
                        i += 1;
                        loop {
                            match chars.get(i) {
                                None => return Err(invalid(pattern)),
                                Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                                    text.push('\'');
                                    i += 2;
                                }
                                Some('\'') => {
                                    i += 1;
                                    break;
                                }
                                Some(&other) => {
                                    text.push(other);
                                    i += 1;
                                }
                            }
                        }
                    }
                    push_literal(stack.last_mut().expect("a section is open"), &text);
                    continue;
                }
                '[' => stack.push(Vec::new()),
                ']' => {
                    if stack.len() == 1 {
                        return Err(invalid(pattern));
                    }
                    let section = stack.pop().expect("checked above");
                    stack
                        .last_mut()
                        .expect("a section is open")
                        .push(Item::Optional(section));
                }
                // Reserved by Java's DateTimeFormatter.
                '{' | '}' | '#' => return Err(invalid(pattern)),
                other => push_literal(
                    stack.last_mut().expect("a section is open"),
                    &other.to_string(),
                ),
            }
            i += 1;
        }
        // Sections still open end with the pattern.
        while stack.len() > 1 {
            let section = stack.pop().expect("more than one");
            stack
                .last_mut()
                .expect("a section is open")
                .push(Item::Optional(section));
        }
        Ok(Self {
            items: stack.pop().expect("the outermost section"),
            era,
        })
    }

    /// Formats an instant, given as microseconds since the epoch, in UTC.
    pub(super) fn format(&self, micros: i64) -> Result<String, SqlError> {
        let time = DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| SqlError::new("DATETIME_OVERFLOW", "22008", "Datetime overflow."))?
            .naive_utc();
        let mut out = String::new();
        format_items(&self.items, &time, self.era, &mut out);
        Ok(out)
    }

    /// Parses `text` into microseconds since the epoch; the error is Java's description.
    pub(super) fn parse(&self, text: &str) -> Result<i64, String> {
        let chars: Vec<char> = text.chars().collect();
        let mut parsed = Parsed::default();
        let end = parse_items(&self.items, &chars, 0, &mut parsed)
            .map_err(|at| format!("Text '{text}' could not be parsed at index {at}"))?;
        if end < chars.len() {
            return Err(format!(
                "Text '{text}' could not be parsed, unparsed text found at index {end}"
            ));
        }
        parsed
            .resolve(self.era)
            .map_err(|reason| format!("Text '{text}' could not be parsed: {reason}"))
    }
}

fn push_literal(items: &mut Vec<Item>, text: &str) {
    match items.last_mut() {
        Some(Item::Literal(existing)) => existing.push_str(text),
        _ => items.push(Item::Literal(text.to_string())),
    }
}

/// Spark's own checks, made on the unquoted parts before Java reads the pattern.
fn spark_checks(pattern: &str, parsing: bool) -> Result<(), SqlError> {
    const LENGTHS: [&str; 7] = [
        "GGGGG", "MMMMM", "LLLLL", "EEEEE", "QQQQQ", "qqqqq", "yyyyyyy",
    ];
    for part in pattern.split('\'').step_by(2) {
        if let Some(c) = part.chars().find(|c| "YWwuec".contains(*c)) {
            return Err(SqlError::new(
                "INCONSISTENT_BEHAVIOR_CROSS_VERSION.DATETIME_WEEK_BASED_PATTERN",
                "42K0B",
                format!(
                    "You may get a different result due to the upgrading to Spark >= 3.0:\n\
                     All week-based patterns are unsupported since Spark 3.0, detected \
                     week-based character: {c}.\nPlease use the SQL function EXTRACT instead."
                ),
            ));
        }
        if let Some(c) = part
            .chars()
            .find(|c| "ABnNp".contains(*c) || (parsing && "EFqQ".contains(*c)))
        {
            return Err(SqlError::new(
                "INVALID_DATETIME_PATTERN.ILLEGAL_CHARACTER",
                "22007",
                format!(
                    "Illegal pattern character found in datetime pattern: {c}. Please provide \
                     legal character."
                ),
            ));
        }
        if let Some(style) = LENGTHS.iter().find(|style| part.contains(*style)) {
            return Err(SqlError::new(
                "INVALID_DATETIME_PATTERN.LENGTH",
                "22007",
                format!(
                    "Too many letters in datetime pattern: {style}. Please reduce pattern length."
                ),
            ));
        }
    }
    Ok(())
}

/// The field a run of `count` letters `c` stands for, as Java's `DateTimeFormatterBuilder`
/// reads it: `None` for a letter or count it refuses, `Some(Err)` for one the emulator lacks.
fn field(c: char, count: usize, parsing: bool) -> Option<Result<Field, SqlError>> {
    let unsupported = |what: &str| {
        Some(Err(SqlError::unsupported(format!(
            "The emulator does not support the datetime pattern letter {c} {what}."
        ))))
    };
    let field = match (c, count) {
        ('G', 1..=4) => Field::Era,
        ('y', 1..=19) => Field::Year,
        ('D', 1..=3) => Field::DayOfYear,
        ('M' | 'L', 1..=4) => Field::Month,
        ('d', 1..=2) => Field::Day,
        ('Q' | 'q', 1..=4) => Field::Quarter,
        ('E', 1..=4) => Field::DayOfWeek,
        ('F', 1) => Field::AlignedDayOfWeekInMonth,
        ('a', 1) => Field::AmPm,
        ('h', 1..=2) => Field::ClockHourOfAmPm,
        ('K', 1..=2) => Field::HourOfAmPm,
        ('k', 1..=2) => Field::ClockHourOfDay,
        ('H', 1..=2) => Field::HourOfDay,
        ('m', 1..=2) => Field::Minute,
        ('s', 1..=2) => Field::Second,
        ('S', 1..=9) => Field::Fraction,
        ('z', 1..=4) if parsing => return unsupported("when parsing"),
        ('z', 1..=4) => Field::ZoneName,
        ('O', 1 | 4) => Field::OffsetO,
        ('X', 1..=5) => Field::OffsetUpperX,
        ('x', 1..=5) => Field::OffsetLowerX,
        ('Z', 1..=5) => Field::OffsetZ,
        ('V', 2) | ('v', 1 | 4) | ('g', _) => return unsupported("(time-zone IDs)"),
        _ => return None,
    };
    Some(Ok(field))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Short text is the first three letters of the full text, in English.
fn text(full: &str, count: usize) -> &str {
    if count >= 4 { full } else { &full[..3] }
}

fn pad(value: i64, width: usize) -> String {
    if value < 0 {
        format!("-{:0width$}", -value)
    } else {
        format!("{value:0width$}")
    }
}

fn format_items(items: &[Item], time: &NaiveDateTime, era: bool, out: &mut String) {
    for item in items {
        match item {
            Item::Literal(text) => out.push_str(text),
            // Every field of an instant is available, so optional sections print.
            Item::Optional(section) => format_items(section, time, era, out),
            Item::Field(field, count) => format_field(*field, *count, time, era, out),
        }
    }
}

fn format_field(field: Field, count: usize, time: &NaiveDateTime, era: bool, out: &mut String) {
    let year = i64::from(time.year());
    let hour = i64::from(time.hour());
    let number = |value: i64, out: &mut String| out.push_str(&pad(value, count));
    match field {
        Field::Era => out.push_str(match (year > 0, count) {
            (true, 4) => "Anno Domini",
            (true, _) => "AD",
            (false, 4) => "Before Christ",
            (false, _) => "BC",
        }),
        Field::Year => {
            let value = if era && year <= 0 { 1 - year } else { year };
            match count {
                2 => out.push_str(&pad(value.rem_euclid(100), 2)),
                1 | 3 => number(value, out),
                // Java's EXCEEDS_PAD: a sign when the value is wider than the pattern.
                _ if value >= 0 && value.to_string().len() > count => {
                    out.push('+');
                    number(value, out);
                }
                _ => number(value, out),
            }
        }
        Field::DayOfYear => number(i64::from(time.ordinal()), out),
        Field::Month if count >= 3 => out.push_str(text(MONTHS[time.month0() as usize], count)),
        Field::Month => number(i64::from(time.month()), out),
        Field::Day => number(i64::from(time.day()), out),
        Field::Quarter => {
            let quarter = i64::from(time.month0() / 3 + 1);
            match count {
                3 => out.push_str(&format!("Q{quarter}")),
                4 => out.push_str(["1st", "2nd", "3rd", "4th"][quarter as usize - 1]),
                _ => number(quarter, out),
            }
            if count == 4 {
                out.push_str(" quarter");
            }
        }
        Field::DayOfWeek => out.push_str(text(
            DAYS[time.weekday().num_days_from_monday() as usize],
            count,
        )),
        Field::AlignedDayOfWeekInMonth => number(i64::from(time.day0() % 7 + 1), out),
        Field::AmPm => out.push_str(if hour < 12 { "AM" } else { "PM" }),
        Field::ClockHourOfAmPm => number(if hour % 12 == 0 { 12 } else { hour % 12 }, out),
        Field::HourOfAmPm => number(hour % 12, out),
        Field::ClockHourOfDay => number(if hour == 0 { 24 } else { hour }, out),
        Field::HourOfDay => number(hour, out),
        Field::Minute => number(i64::from(time.minute()), out),
        Field::Second => number(i64::from(time.second()), out),
        Field::Fraction => {
            let nanos = i64::from(time.nanosecond());
            out.push_str(&pad(nanos / 10_i64.pow(9 - count as u32), count));
        }
        // The session time zone is UTC.
        Field::ZoneName => out.push_str(if count == 4 {
            "Coordinated Universal Time"
        } else {
            "UTC"
        }),
        Field::OffsetO => out.push_str("GMT"),
        Field::OffsetUpperX => out.push('Z'),
        Field::OffsetLowerX => out.push_str(match count {
            1 => "+00",
            2 | 4 => "+0000",
            _ => "+00:00",
        }),
        Field::OffsetZ => out.push_str(match count {
            1..=3 => "+0000",
            4 => "GMT",
            _ => "Z",
        }),
    }
}

/// The fields a parse found.
#[derive(Clone, Default, Debug)]
struct Parsed {
    era_ad: Option<bool>,
    year: Option<i64>,
    reduced_year: Option<i64>,
    day_of_year: Option<i64>,
    month: Option<i64>,
    day: Option<i64>,
    pm: Option<bool>,
    clock_hour_of_am_pm: Option<i64>,
    hour_of_am_pm: Option<i64>,
    clock_hour_of_day: Option<i64>,
    hour_of_day: Option<i64>,
    minute: Option<i64>,
    second: Option<i64>,
    nanos: Option<i64>,
    offset_seconds: Option<i64>,
}

/// Java's range check; `range` is how Java prints the valid values.
fn check(name: &str, value: Option<i64>, min: i64, max: i64, range: &str) -> Result<(), String> {
    match value {
        Some(v) if v < min || v > max => Err(format!(
            "Invalid value for {name} (valid values {range}): {v}"
        )),
        _ => Ok(()),
    }
}

impl Parsed {
    /// Java's STRICT resolution, with Spark's defaults for missing fields (1970-01-01,
    /// midnight), into microseconds since the epoch.
    fn resolve(&self, era: bool) -> Result<i64, String> {
        check("MonthOfYear", self.month, 1, 12, "1 - 12")?;
        check("DayOfMonth", self.day, 1, 31, "1 - 28/31")?;
        check("DayOfYear", self.day_of_year, 1, 366, "1 - 365/366")?;
        check("HourOfDay", self.hour_of_day, 0, 23, "0 - 23")?;
        check("ClockHourOfAmPm", self.clock_hour_of_am_pm, 1, 12, "1 - 12")?;
        check("HourOfAmPm", self.hour_of_am_pm, 0, 11, "0 - 11")?;
        check("ClockHourOfDay", self.clock_hour_of_day, 1, 24, "1 - 24")?;
        check("MinuteOfHour", self.minute, 0, 59, "0 - 59")?;
        check("SecondOfMinute", self.second, 0, 59, "0 - 59")?;
        let year = match (self.year, self.reduced_year) {
            (Some(year), _) if era && self.era_ad == Some(false) => 1 - year,
            (Some(year), _) => year,
            (None, Some(reduced)) => 2000 + reduced,
            (None, None) => 1970,
        };
        let year = i32::try_from(year).map_err(|_| format!("Invalid value for Year: {year}"))?;
        let date = match (self.day_of_year, self.month, self.day) {
            (Some(ordinal), None, None) => NaiveDate::from_yo_opt(year, ordinal as u32)
                .ok_or_else(|| {
                    format!("Invalid date 'DayOfYear {ordinal}' as '{year}' is not a leap year")
                })?,
            (ordinal, month, day) => {
                let (month, day) = (month.unwrap_or(1), day.unwrap_or(1));
                let date =
                    NaiveDate::from_ymd_opt(year, month as u32, day as u32).ok_or_else(|| {
                        format!(
                            "Invalid date '{} {day}'",
                            MONTHS[month as usize - 1].to_uppercase()
                        )
                    })?;
                if let Some(ordinal) = ordinal
                    && i64::from(date.ordinal()) != ordinal
                {
                    return Err(format!(
                        "Conflict found: Field DayOfYear {} differs from DayOfYear {ordinal} \
                         derived from {date}",
                        date.ordinal()
                    ));
                }
                date
            }
        };
        // Spark takes a missing AM/PM as AM, and a lone PM as noon.
        let hour = if let Some(hour) = self.hour_of_day {
            hour
        } else if let Some(hour) = self.clock_hour_of_day {
            hour % 24
        } else if let Some(hour) = self
            .clock_hour_of_am_pm
            .map(|h| h % 12)
            .or(self.hour_of_am_pm)
        {
            hour + if self.pm == Some(true) { 12 } else { 0 }
        } else if self.pm == Some(true) {
            12
        } else {
            0
        };
        let time = date
            .and_hms_nano_opt(
                hour as u32,
                self.minute.unwrap_or(0) as u32,
                self.second.unwrap_or(0) as u32,
                self.nanos.unwrap_or(0) as u32,
            )
            .ok_or_else(|| "Invalid time".to_string())?;
        let micros = time.and_utc().timestamp_micros();
        Ok(micros - self.offset_seconds.unwrap_or(0) * 1_000_000)
    }
}

/// The width a numeric field takes when parsing: `(min, max)` digits.
fn widths(field: Field, count: usize) -> Option<(usize, usize)> {
    Some(match (field, count) {
        (Field::Year, 2) => (2, 2),
        (Field::Year, count) => (count, 19),
        (Field::DayOfYear, 3) => (3, 3),
        (Field::DayOfYear, 2) => (2, 3),
        (Field::Fraction, count) => (1, count),
        (
            Field::DayOfYear
            | Field::Month
            | Field::Day
            | Field::Quarter
            | Field::ClockHourOfAmPm
            | Field::HourOfAmPm
            | Field::ClockHourOfDay
            | Field::HourOfDay
            | Field::Minute
            | Field::Second,
            1,
        ) => (1, 19),
        (
            Field::Month
            | Field::Day
            | Field::Quarter
            | Field::ClockHourOfAmPm
            | Field::HourOfAmPm
            | Field::ClockHourOfDay
            | Field::HourOfDay
            | Field::Minute
            | Field::Second,
            2,
        ) => (2, 2),
        _ => return None,
    })
}

/// Digits that the numeric fields right after `items[0]` need, which a variable-width field
/// leaves them (Java's adjacent value parsing, so `yyyyMMdd` reads `20251129`).
fn reserved(rest: &[Item]) -> usize {
    rest.iter()
        .map_while(|item| match item {
            Item::Field(field, count) => match widths(*field, *count) {
                Some((min, max)) if min == max => Some(min),
                _ => None,
            },
            _ => None,
        })
        .sum()
}

/// Parses `items` from `pos`; the end position, or the index where parsing failed.
fn parse_items(
    items: &[Item],
    text: &[char],
    mut pos: usize,
    parsed: &mut Parsed,
) -> Result<usize, usize> {
    for (i, item) in items.iter().enumerate() {
        pos = match item {
            Item::Literal(literal) => {
                let literal: Vec<char> = literal.chars().collect();
                let matches = text.len() >= pos + literal.len()
                    && text[pos..pos + literal.len()]
                        .iter()
                        .zip(&literal)
                        .all(|(a, b)| a.eq_ignore_ascii_case(b));
                if !matches {
                    return Err(pos);
                }
                pos + literal.len()
            }
            Item::Optional(section) => {
                let mut attempt = parsed.clone();
                match parse_items(section, text, pos, &mut attempt) {
                    Ok(end) => {
                        *parsed = attempt;
                        end
                    }
                    Err(_) => pos,
                }
            }
            Item::Field(field, count) => {
                parse_field(*field, *count, text, pos, reserved(&items[i + 1..]), parsed)?
            }
        };
    }
    Ok(pos)
}

fn parse_field(
    field: Field,
    count: usize,
    text: &[char],
    pos: usize,
    reserved: usize,
    parsed: &mut Parsed,
) -> Result<usize, usize> {
    let rest = &text[pos..];
    let word = |choices: &[(&str, i64)]| {
        choices
            .iter()
            .filter(|(name, _)| {
                let name: Vec<char> = name.chars().collect();
                rest.len() >= name.len()
                    && rest[..name.len()]
                        .iter()
                        .zip(&name)
                        .all(|(a, b)| a.eq_ignore_ascii_case(b))
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(name, value)| (pos + name.chars().count(), *value))
            .ok_or(pos)
    };
    match field {
        Field::Era => {
            let (end, ad) = word(&[
                ("AD", 1),
                ("BC", 0),
                ("Anno Domini", 1),
                ("Before Christ", 0),
            ])?;
            parsed.era_ad = Some(ad == 1);
            Ok(end)
        }
        Field::Month if count >= 3 => {
            let names: Vec<(String, i64)> = MONTHS
                .iter()
                .enumerate()
                .map(|(i, m)| (text_owned(m, count), i as i64 + 1))
                .collect();
            let names: Vec<(&str, i64)> = names.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            let (end, month) = word(&names)?;
            parsed.month = Some(month);
            Ok(end)
        }
        Field::AmPm => {
            let (end, pm) = word(&[("AM", 0), ("PM", 1)])?;
            parsed.pm = Some(pm == 1);
            Ok(end)
        }
        Field::OffsetO | Field::OffsetUpperX | Field::OffsetLowerX | Field::OffsetZ => {
            let (end, seconds) = parse_offset(field, count, text, pos)?;
            parsed.offset_seconds = Some(seconds);
            Ok(end)
        }
        _ => {
            let (min, max) = widths(field, count).ok_or(pos)?;
            let signed = field == Field::Year && count != 2;
            let (negative, start) = match rest.first() {
                Some('-') if signed => (true, pos + 1),
                Some('+') if signed => (false, pos + 1),
                _ => (false, pos),
            };
            let available = text[start..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
            // Only a variable-width field leaves digits to the fixed-width ones after it.
            let usable = if min < max {
                available.saturating_sub(reserved)
            } else {
                available
            };
            let take = usable.min(max);
            if take < min {
                return Err(pos);
            }
            let digits: String = text[start..start + take].iter().collect();
            let value: i64 = digits.parse().map_err(|_| pos)?;
            let value = if negative { -value } else { value };
            match field {
                Field::Year if count == 2 => parsed.reduced_year = Some(value),
                Field::Year => parsed.year = Some(value),
                Field::DayOfYear => parsed.day_of_year = Some(value),
                Field::Month => parsed.month = Some(value),
                Field::Day => parsed.day = Some(value),
                Field::ClockHourOfAmPm => parsed.clock_hour_of_am_pm = Some(value),
                Field::HourOfAmPm => parsed.hour_of_am_pm = Some(value),
                Field::ClockHourOfDay => parsed.clock_hour_of_day = Some(value),
                Field::HourOfDay => parsed.hour_of_day = Some(value),
                Field::Minute => parsed.minute = Some(value),
                Field::Second => parsed.second = Some(value),
                Field::Fraction => parsed.nanos = Some(value * 10_i64.pow(9 - take as u32)),
                _ => return Err(pos),
            }
            Ok(start + take)
        }
    }
}

fn text_owned(full: &str, count: usize) -> String {
    text(full, count).to_string()
}

/// An offset such as `Z`, `+08`, `-0830`, `+08:30` or `GMT+8`.
fn parse_offset(
    field: Field,
    count: usize,
    text: &[char],
    pos: usize,
) -> Result<(usize, i64), usize> {
    let mut at = pos;
    let starts = |at: usize, s: &str| {
        let s: Vec<char> = s.chars().collect();
        text.len() >= at + s.len()
            && text[at..at + s.len()]
                .iter()
                .zip(&s)
                .all(|(a, b)| a.eq_ignore_ascii_case(b))
    };
    let zulu = field == Field::OffsetUpperX || (field == Field::OffsetZ && count == 5);
    if zulu && starts(at, "Z") {
        return Ok((at + 1, 0));
    }
    let localized = field == Field::OffsetO || (field == Field::OffsetZ && count == 4);
    if localized {
        if !starts(at, "GMT") {
            return Err(pos);
        }
        at += 3;
        if !matches!(text.get(at), Some('+' | '-')) {
            return Ok((at, 0));
        }
    }
    let sign = match text.get(at) {
        Some('+') => 1,
        Some('-') => -1,
        _ => return Err(pos),
    };
    at += 1;
    let mut parts = Vec::new();
    while parts.len() < 3 {
        if !parts.is_empty() && text.get(at) == Some(&':') {
            at += 1;
        }
        let digits = text[at..]
            .iter()
            .take(2)
            .take_while(|c| c.is_ascii_digit())
            .count();
        // Localized offsets may have a one-digit hour (GMT+8).
        if digits == 2 || (localized && parts.is_empty() && digits == 1) {
            let value: String = text[at..at + digits].iter().collect();
            parts.push(value.parse::<i64>().map_err(|_| at)?);
            at += digits;
        } else if parts.is_empty() {
            return Err(at);
        } else {
            break;
        }
    }
    let [hours, minutes, seconds] = [0, 1, 2].map(|i| parts.get(i).copied().unwrap_or(0));
    if hours > 18 || minutes > 59 || seconds > 59 {
        return Err(pos);
    }
    Ok((at, sign * (hours * 3600 + minutes * 60 + seconds)))
}

/// Compiles the pattern of each row, reusing the last one.
struct Patterns {
    parsing: bool,
    last: Option<(String, Pattern)>,
}

impl Patterns {
    fn new(parsing: bool) -> Self {
        Self {
            parsing,
            last: None,
        }
    }

    fn get(&mut self, text: &str) -> Result<&Pattern> {
        if self.last.as_ref().is_none_or(|(t, _)| t != text) {
            let pattern = Pattern::compile(text, self.parsing).map_err(external)?;
            self.last = Some((text.to_string(), pattern));
        }
        Ok(&self.last.as_ref().expect("just set").1)
    }
}

fn external(err: SqlError) -> DataFusionError {
    DataFusionError::External(Box::new(err))
}

/// The values as UTC microseconds: timestamps in any unit or zone, dates at midnight, and
/// strings cast as Databricks casts them to TIMESTAMP (failing on a malformed one).
fn instants(values: &ArrayRef, safe: bool) -> Result<ArrayRef> {
    let options = CastOptions {
        safe,
        ..Default::default()
    };
    Ok(cast_with_options(values, &types::timestamp(), &options)?)
}

/// Runs `f` on each row of `(values, patterns)`; a result from scalars is a scalar.
fn per_row(
    args: ScalarFunctionArgs,
    name: &str,
    f: impl FnOnce(&ArrayRef, &StringArray) -> Result<ArrayRef>,
) -> Result<ColumnarValue> {
    let rows = args.number_rows;
    let scalars = args
        .args
        .iter()
        .all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let mut values = args.args.into_iter();
    let (Some(value), Some(pattern)) = (values.next(), values.next()) else {
        return plan_err!("{name} takes two arguments");
    };
    let value = value.into_array(rows)?;
    let pattern = cast(&pattern.into_array(rows)?, &DataType::Utf8)?;
    let result = f(&value, pattern.as_string::<i32>())?;
    Ok(if scalars && result.len() == 1 {
        ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?)
    } else {
        ColumnarValue::Array(result)
    })
}

/// `date_format(expr, fmt)`: DATE, TIMESTAMP, TIMESTAMP_NTZ or a STRING holding one, as text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DateFormat {
    signature: Signature,
}

impl DateFormat {
    fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DateFormat {
    fn name(&self) -> &str {
        "date_format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [value, _] if datetime_like(value) => Ok(DataType::Utf8),
            [value, _] => plan_err!("date_format takes a DATE, TIMESTAMP or STRING, not {value}"),
            _ => plan_err!("date_format takes two arguments"),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        per_row(args, "date_format", |values, patterns| {
            let instants = instants(values, false)?;
            format_instants(&instants, patterns)
        })
    }
}

/// Each instant (TIMESTAMP microseconds) as text, by its row's pattern.
fn format_instants(instants: &ArrayRef, patterns: &StringArray) -> Result<ArrayRef> {
    let instants = instants.as_primitive::<TimestampMicrosecondType>();
    let mut compiled = Patterns::new(false);
    let text = instants
        .iter()
        .zip(patterns.iter())
        .map(|pair| match pair {
            (Some(micros), Some(pattern)) => compiled
                .get(pattern)?
                .format(micros)
                .map(Some)
                .map_err(external),
            _ => Ok(None),
        })
        .collect::<Result<StringArray>>()?;
    Ok(Arc::new(text) as ArrayRef)
}

/// `from_unixtime(seconds [, fmt])`: seconds since the epoch as text, by default
/// `yyyy-MM-dd HH:mm:ss`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct FromUnixtime {
    signature: Signature,
}

impl FromUnixtime {
    fn new() -> Self {
        Self {
            signature: Signature::one_of(
                vec![
                    datafusion::logical_expr::TypeSignature::Any(1),
                    datafusion::logical_expr::TypeSignature::Any(2),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for FromUnixtime {
    fn name(&self) -> &str {
        "from_unixtime"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) if t.is_integer() || t.is_floating() || t.is_null() => Ok(DataType::Utf8),
            Some(t) => plan_err!("from_unixtime takes a BIGINT, not {t}"),
            None => plan_err!("from_unixtime takes one or two arguments"),
        }
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() == 1 {
            args.args
                .push(ColumnarValue::Scalar(ScalarValue::from(DEFAULT_PATTERN)));
        }
        per_row(args, "from_unixtime", |values, patterns| {
            // Spark takes whole seconds.
            let seconds = cast(&cast(values, &DataType::Int64)?, &DataType::Float64)?;
            let instants = seconds_to_instants(&seconds)?;
            format_instants(&instants, patterns)
        })
    }
}

/// `unix_timestamp(expr [, fmt])` and `to_unix_timestamp(expr [, fmt])`: whole seconds since the
/// epoch (rounded down) of a DATE, a TIMESTAMP, or a STRING parsed by the pattern (by default
/// `yyyy-MM-dd HH:mm:ss`). `unix_timestamp()` is rewritten to the current time's.
#[derive(Debug, PartialEq, Eq, Hash)]
struct UnixTimestamp {
    name: &'static str,
    signature: Signature,
}

impl UnixTimestamp {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            signature: Signature::one_of(
                vec![
                    datafusion::logical_expr::TypeSignature::Any(1),
                    datafusion::logical_expr::TypeSignature::Any(2),
                ],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for UnixTimestamp {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(t) if datetime_like(t) => Ok(DataType::Int64),
            Some(t) => plan_err!("{} takes a DATE, TIMESTAMP or STRING, not {t}", self.name),
            None => plan_err!("{} takes one or two arguments", self.name),
        }
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() == 1 {
            args.args
                .push(ColumnarValue::Scalar(ScalarValue::from(DEFAULT_PATTERN)));
        }
        let is_string = matches!(
            args.args[0].data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        per_row(args, self.name, |values, patterns| {
            let micros: TimestampMicrosecondArray = if is_string {
                let values = cast(values, &DataType::Utf8)?;
                let mut compiled = Patterns::new(true);
                values
                    .as_string::<i32>()
                    .iter()
                    .zip(patterns.iter())
                    .map(|pair| match pair {
                        (Some(text), Some(pattern)) => compiled
                            .get(pattern)?
                            .parse(text)
                            .map(Some)
                            .map_err(cannot_parse),
                        _ => Ok(None),
                    })
                    .collect::<Result<_>>()?
            } else {
                instants(values, false)?
                    .as_primitive::<TimestampMicrosecondType>()
                    .clone()
            };
            let seconds: datafusion::arrow::array::Int64Array = micros
                .iter()
                .map(|m| m.map(|m| m.div_euclid(1_000_000)))
                .collect();
            Ok(Arc::new(seconds) as ArrayRef)
        })
    }
}

fn cannot_parse(reason: String) -> DataFusionError {
    external(SqlError::new(
        "CANNOT_PARSE_TIMESTAMP",
        "22007",
        format!(
            "{reason}. Use `try_to_timestamp` to tolerate invalid input string and return NULL \
             instead."
        ),
    ))
}

fn datetime_like(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Timestamp(..)
            | DataType::Date32
            | DataType::Date64
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Null
    )
}

/// Numbers as seconds since the epoch, as Spark casts them to TIMESTAMP.
fn seconds_to_instants(seconds: &ArrayRef) -> Result<ArrayRef> {
    let seconds = cast(seconds, &DataType::Float64)?;
    let micros = seconds
        .as_primitive::<datafusion::arrow::datatypes::Float64Type>()
        .iter()
        .map(|s| {
            s.map(|s| {
                let micros = (s * 1e6).trunc();
                if micros.is_finite() && micros.abs() < i64::MAX as f64 {
                    Ok(micros as i64)
                } else {
                    Err(external(SqlError::new(
                        "CAST_OVERFLOW",
                        "22003",
                        format!("The value {s} of the type \"DOUBLE\" cannot be cast to \"TIMESTAMP\" due to an overflow."),
                    )))
                }
            })
            .transpose()
        })
        .collect::<Result<TimestampMicrosecondArray>>()?
        .with_timezone(types::UTC);
    Ok(Arc::new(micros))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Parse {
    Timestamp,
    TryTimestamp,
    Date,
}

/// `to_timestamp(expr [, fmt])`, `try_to_timestamp(expr [, fmt])` and `to_date(expr [, fmt])`:
/// without a pattern a cast; with one, a STRING parsed by it (other types are cast and the
/// pattern ignored, as in Spark).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseDatetime {
    kind: Parse,
    signature: Signature,
}

impl ParseDatetime {
    fn new(kind: Parse) -> Self {
        Self {
            kind,
            signature: Signature::one_of(
                vec![
                    datafusion::logical_expr::TypeSignature::Any(1),
                    datafusion::logical_expr::TypeSignature::Any(2),
                ],
                Volatility::Immutable,
            ),
        }
    }

    fn target(&self) -> DataType {
        match self.kind {
            Parse::Date => DataType::Date32,
            _ => types::timestamp(),
        }
    }
}

impl ScalarUDFImpl for ParseDatetime {
    fn name(&self) -> &str {
        match self.kind {
            Parse::Timestamp => "to_timestamp",
            Parse::TryTimestamp => "try_to_timestamp",
            Parse::Date => "to_date",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        // Spark reads numbers as seconds since the epoch for a TIMESTAMP, and has no DATE of one.
        let numeric = |t: &DataType| t.is_integer() || t.is_floating();
        match arg_types.first() {
            Some(t) if datetime_like(t) => Ok(self.target()),
            Some(t) if numeric(t) && self.kind != Parse::Date => Ok(self.target()),
            Some(t) => plan_err!("{} does not take a {t}", self.name()),
            None => plan_err!("{} takes one or two arguments", self.name()),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let safe = self.kind == Parse::TryTimestamp;
        let target = self.target();
        let is_string = matches!(
            args.args[0].data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        if args.args.len() == 1 || !is_string {
            let options = CastOptions {
                safe,
                ..Default::default()
            };
            let convert = |array: &ArrayRef| -> Result<ArrayRef> {
                let array = if array.data_type().is_integer() || array.data_type().is_floating() {
                    seconds_to_instants(array)?
                } else {
                    Arc::clone(array)
                };
                Ok(cast_with_options(&array, &target, &options)?)
            };
            let value = args.args.into_iter().next().expect("one argument or more");
            return Ok(match value {
                ColumnarValue::Array(array) => ColumnarValue::Array(convert(&array)?),
                ColumnarValue::Scalar(scalar) => ColumnarValue::Scalar(
                    ScalarValue::try_from_array(&convert(&scalar.to_array()?)?, 0)?,
                ),
            });
        }
        let name = self.name().to_string();
        per_row(args, &name, |values, patterns| {
            let values = cast(values, &DataType::Utf8)?;
            let mut compiled = Patterns::new(true);
            let micros = values
                .as_string::<i32>()
                .iter()
                .zip(patterns.iter())
                .map(|pair| match pair {
                    (Some(text), Some(pattern)) => match compiled.get(pattern)?.parse(text) {
                        Ok(micros) => Ok(Some(micros)),
                        Err(_) if safe => Ok(None),
                        Err(reason) => Err(cannot_parse(reason)),
                    },
                    _ => Ok(None),
                })
                .collect::<Result<TimestampMicrosecondArray>>()?
                .with_timezone(types::UTC);
            Ok(cast(&micros, &target)?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn micros(text: &str) -> i64 {
        text.parse::<DateTime<chrono::Utc>>()
            .unwrap()
            .timestamp_micros()
    }

    fn format(pattern: &str, at: &str) -> String {
        Pattern::compile(pattern, false)
            .unwrap()
            .format(micros(at))
            .unwrap()
    }

    #[test]
    fn formats_like_spark() {
        let at = "2025-11-04T15:07:09.123456Z";
        for (pattern, expected) in [
            ("yyyy-MM-dd HH:mm:ss", "2025-11-04 15:07:09"),
            ("yyyy-MM-dd'T'HH:mm:ss.SSS", "2025-11-04T15:07:09.123"),
            ("y yy yyy yyyyy", "2025 25 2025 02025"),
            ("M MM MMM MMMM", "11 11 Nov November"),
            ("d dd D DDD", "4 04 308 308"),
            ("E EEE EEEE", "Tue Tue Tuesday"),
            ("h hh K k a", "3 03 3 15 PM"),
            ("Q QQ QQQ QQQQ", "4 04 Q4 4th quarter"),
            ("S SSSSSS SSSSSSSSS", "1 123456 123456000"),
            ("G GGGG", "AD Anno Domini"),
            (
                "X XXX x xxx Z ZZZZ ZZZZZ O z",
                "Z Z +00 +00:00 +0000 GMT Z GMT UTC",
            ),
            ("'It''s' h 'o''clock'", "It's 3 o'clock"),
            ("''yyyy[-MM]", "'2025-11"),
            ("EEE, d MMM yyyy", "Tue, 4 Nov 2025"),
        ] {
            assert_eq!(format(pattern, at), expected, "{pattern}");
        }
        assert_eq!(format("hh a", "2025-11-04T00:30:00Z"), "12 AM");
        assert_eq!(format("k", "2025-11-04T00:30:00Z"), "24");
    }

    #[test]
    fn parses_like_spark() {
        for (text, pattern, expected) in [
            ("2016-12-31", "yyyy-MM-dd", "2016-12-31T00:00:00Z"),
            (
                "2016-12-31 00:12:00",
                "yyyy-MM-dd HH:mm:ss",
                "2016-12-31T00:12:00Z",
            ),
            ("20251129", "yyyyMMdd", "2025-11-29T00:00:00Z"),
            (
                "2025-11-29T12:00:00.5",
                "yyyy-MM-dd'T'HH:mm:ss.SSS",
                "2025-11-29T12:00:00.5Z",
            ),
            (
                "29 nov 2025 03:04 pm",
                "d MMM yyyy hh:mm a",
                "2025-11-29T15:04:00Z",
            ),
            (
                "2025-11-29 12:00 +02:00",
                "yyyy-MM-dd HH:mm XXX",
                "2025-11-29T10:00:00Z",
            ),
            (
                "2025-11-29 12:00Z",
                "yyyy-MM-dd HH:mmX",
                "2025-11-29T12:00:00Z",
            ),
            ("2025-11-29", "yyyy-MM-dd[ HH:mm]", "2025-11-29T00:00:00Z"),
            (
                "2025-11-29 07:30",
                "yyyy-MM-dd[ HH:mm]",
                "2025-11-29T07:30:00Z",
            ),
            ("25-1-2", "yy-M-d", "2025-01-02T00:00:00Z"),
            ("12", "MM", "1970-12-01T00:00:00Z"),
        ] {
            let pattern = Pattern::compile(pattern, true).unwrap();
            assert_eq!(pattern.parse(text), Ok(micros(expected)), "{text}");
        }
    }

    #[test]
    fn refuses_what_spark_refuses() {
        let parse =
            |text: &str, pattern: &str| Pattern::compile(pattern, true).unwrap().parse(text);
        assert_eq!(
            parse("2016-12-32", "yyyy-MM-dd").unwrap_err(),
            "Text '2016-12-32' could not be parsed: Invalid value for DayOfMonth (valid values 1 - 28/31): 32"
        );
        assert_eq!(
            parse("2016-02-30", "yyyy-MM-dd").unwrap_err(),
            "Text '2016-02-30' could not be parsed: Invalid date 'FEBRUARY 30'"
        );
        assert_eq!(
            parse("abc", "yyyy-MM-dd").unwrap_err(),
            "Text 'abc' could not be parsed at index 0"
        );
        assert_eq!(
            parse("2016-12-31 00:12", "yyyy-MM-dd").unwrap_err(),
            "Text '2016-12-31 00:12' could not be parsed, unparsed text found at index 10"
        );
        assert!(parse("2016-1-31", "yyyy-MM-dd").is_err());
        let class = |pattern: &str, parsing: bool| {
            Pattern::compile(pattern, parsing)
                .unwrap_err()
                .class
                .unwrap()
        };
        assert_eq!(
            class("YYYY-MM-dd", false),
            "INCONSISTENT_BEHAVIOR_CROSS_VERSION.DATETIME_WEEK_BASED_PATTERN"
        );
        assert_eq!(
            class("yyyy-MM-ddTHH", false),
            "INVALID_DATETIME_PATTERN.WITH_SUGGESTION"
        );
        assert_eq!(class("QQQQQ", false), "INVALID_DATETIME_PATTERN.LENGTH");
        assert_eq!(
            class("yyyy A", false),
            "INVALID_DATETIME_PATTERN.ILLEGAL_CHARACTER"
        );
        assert_eq!(
            class("EEE yyyy", true),
            "INVALID_DATETIME_PATTERN.ILLEGAL_CHARACTER"
        );
        assert_eq!(
            class("ddd", false),
            "INVALID_DATETIME_PATTERN.WITH_SUGGESTION"
        );
        assert_eq!(
            class("'open", false),
            "INVALID_DATETIME_PATTERN.WITH_SUGGESTION"
        );
    }
}
