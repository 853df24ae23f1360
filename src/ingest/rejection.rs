//! Why a reading was refused: the reasons devices see in `rejected`, and the
//! helpers that quote client input safely in their messages.

use serde_json::Value;

/// Why one reading was refused; `message` names the field and the problem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(super) struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub(super) fn new(reason: RejectReason, message: impl Into<String>) -> Rejection {
        Rejection {
            reason,
            message: message.into(),
        }
    }

    pub(crate) fn not_an_object(found: &Value) -> Rejection {
        Rejection::new(
            RejectReason::NotAnObject,
            format!(
                "a reading must be a JSON object, found {}",
                type_name(found)
            ),
        )
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RejectReason {
    InvalidJson,
    NotAnObject,
    UnknownField,
    InvalidId,
    MissingTs,
    InvalidTs,
    TsOutOfRange,
    MissingMetrics,
    NoMetrics,
    TooManyMetrics,
    InvalidMetricName,
    InvalidMetricValue,
    NonFiniteNumber,
    StringTooLong,
    DeviceMismatch,
    DuplicateId,
    /// From a relay: the reading does not name its device.
    MissingDeviceId,
    /// From a relay: the device is not one the relay's patterns name.
    DeviceNotAllowed,
    /// From a relay: the relay may speak for the device, but the registry has no such device.
    UnknownDevice,
    /// From a relay: the device is disabled.
    DeviceDisabled,
    /// From a relay: the device is over its own rate; the reading may be sent again later.
    DeviceRateLimited,
    /// A line of `POST /api/v2/write` that is not valid line protocol.
    InvalidLineProtocol,
}

impl RejectReason {
    /// Every reason, e.g. to register metric labels up front.
    pub(crate) const ALL: [RejectReason; 22] = [
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::UnknownField,
        RejectReason::InvalidId,
        RejectReason::MissingTs,
        RejectReason::InvalidTs,
        RejectReason::TsOutOfRange,
        RejectReason::MissingMetrics,
        RejectReason::NoMetrics,
        RejectReason::TooManyMetrics,
        RejectReason::InvalidMetricName,
        RejectReason::InvalidMetricValue,
        RejectReason::NonFiniteNumber,
        RejectReason::StringTooLong,
        RejectReason::DeviceMismatch,
        RejectReason::DuplicateId,
        RejectReason::MissingDeviceId,
        RejectReason::DeviceNotAllowed,
        RejectReason::UnknownDevice,
        RejectReason::DeviceDisabled,
        RejectReason::DeviceRateLimited,
        RejectReason::InvalidLineProtocol,
    ];

    /// The same snake_case name as in JSON reports; used as a metric label.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::UnknownField => "unknown_field",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::MissingTs => "missing_ts",
            RejectReason::InvalidTs => "invalid_ts",
            RejectReason::TsOutOfRange => "ts_out_of_range",
            RejectReason::MissingMetrics => "missing_metrics",
            RejectReason::NoMetrics => "no_metrics",
            RejectReason::TooManyMetrics => "too_many_metrics",
            RejectReason::InvalidMetricName => "invalid_metric_name",
            RejectReason::InvalidMetricValue => "invalid_metric_value",
            RejectReason::NonFiniteNumber => "non_finite_number",
            RejectReason::StringTooLong => "string_too_long",
            RejectReason::DeviceMismatch => "device_mismatch",
            RejectReason::DuplicateId => "duplicate_id",
            RejectReason::MissingDeviceId => "missing_device_id",
            RejectReason::DeviceNotAllowed => "device_not_allowed",
            RejectReason::UnknownDevice => "unknown_device",
            RejectReason::DeviceDisabled => "device_disabled",
            RejectReason::DeviceRateLimited => "device_rate_limited",
            RejectReason::InvalidLineProtocol => "invalid_line_protocol",
        }
    }
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Quotes a client-supplied string for a message, cut short so that a huge value
/// cannot bloat the report; control characters come out escaped.
pub(crate) fn excerpt(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_shortens_and_escapes() {
        assert_eq!(excerpt("a\"b"), r#""a\"b""#);
        assert_eq!(excerpt(&"é".repeat(41)), format!("{:?}...", "é".repeat(40)));
        assert_eq!(excerpt(&"é".repeat(40)), format!("{:?}", "é".repeat(40)));
    }
}
