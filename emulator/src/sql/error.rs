//! SQL failures in Databricks' shape.
//!
//! Databricks reports a failed statement with an error class in brackets at the start of the
//! message (`[TABLE_OR_VIEW_NOT_FOUND] The table or view ... SQLSTATE: 42P01`), the SQLSTATE in
//! `status.sql_state`, and a coarse `ServiceErrorCode` (`BAD_REQUEST`, ...) in
//! `status.error.error_code`: the SDKs model `error_code` as that enum, so the error class
//! never goes there.

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

/// A statement that failed while being parsed, bound, planned or run.
#[derive(Clone, Debug)]
pub(crate) struct SqlError {
    /// Databricks error class, e.g. `TABLE_OR_VIEW_NOT_FOUND`; `None` for engine errors that have no
    /// Databricks counterpart.
    pub class: Option<&'static str>,
    pub sql_state: Option<&'static str>,
    pub detail: String,
}

impl SqlError {
    pub(crate) fn new(
        class: &'static str,
        sql_state: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            class: Some(class),
            sql_state: Some(sql_state),
            detail: detail.into(),
        }
    }

    pub(crate) fn syntax(detail: impl std::fmt::Display) -> Self {
        Self::new(
            "PARSE_SYNTAX_ERROR",
            "42601",
            format!("Syntax error: {detail}."),
        )
    }

    pub(crate) fn unsupported(detail: impl Into<String>) -> Self {
        Self::new("UNSUPPORTED_FEATURE", "0A000", detail)
    }

    /// A zero divisor, which Databricks SQL refuses in its default ANSI mode.
    pub(crate) fn divide_by_zero() -> Self {
        Self::new(
            "DIVIDE_BY_ZERO",
            "22012",
            "Division by zero. Use `try_divide` to tolerate divisor being 0 and return NULL \
             instead. If necessary set \"ansi_mode\" to \"false\" to bypass this error.",
        )
    }

    /// Whether this is a Delta write conflict (`DELTA_CONCURRENT_APPEND` and its subclasses).
    pub(crate) fn is_write_conflict(&self) -> bool {
        self.class
            .is_some_and(|class| class.split('.').next() == Some("DELTA_CONCURRENT_APPEND"))
    }

    /// The text Databricks puts in `status.error.message`.
    pub(crate) fn message(&self) -> String {
        let mut message = match self.class {
            Some(class) => format!("[{class}] {}", self.detail),
            None => self.detail.clone(),
        };
        if let Some(state) = self.sql_state {
            message.push_str(&format!(" SQLSTATE: {state}"));
        }
        message
    }

    /// The `ServiceErrorCode` for `status.error.error_code`: an error in the user's SQL is a
    /// `BAD_REQUEST`, anything else an `INTERNAL_ERROR`.
    pub(crate) fn error_code(&self) -> &'static str {
        if self.class.is_some() {
            "BAD_REQUEST"
        } else {
            "INTERNAL_ERROR"
        }
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

/// So that a function can fail with a Databricks error class (inside
/// `DataFusionError::External`), which the conversion below keeps.
impl std::error::Error for SqlError {}

impl From<ParserError> for SqlError {
    fn from(err: ParserError) -> Self {
        let detail = err.to_string();
        Self::syntax(detail.trim_start_matches("sql parser error: "))
    }
}

impl From<DataFusionError> for SqlError {
    /// Classifies DataFusion's errors by variant and, where DataFusion only has a message, by
    /// its wording (pinned by the tests, since the wording is not an API).
    fn from(err: DataFusionError) -> Self {
        let root = err.find_root();
        let text = root.to_string();
        let detail = strip_prefixes(&text).to_string();
        match root {
            DataFusionError::External(external) => {
                if let Some(sql) = external.downcast_ref::<SqlError>() {
                    return sql.clone();
                }
            }
            DataFusionError::SQL(parser, _) => return Self::from(parser.as_ref().clone()),
            DataFusionError::SchemaError(schema, _)
                if matches!(
                    **schema,
                    datafusion::common::SchemaError::FieldNotFound { .. }
                ) =>
            {
                return Self::new(
                    "UNRESOLVED_COLUMN.WITH_SUGGESTION",
                    "42703",
                    format!(
                        "A column, variable, or function parameter cannot be resolved: {detail}."
                    ),
                );
            }
            DataFusionError::ArrowError(arrow, _)
                if matches!(**arrow, datafusion::arrow::error::ArrowError::CastError(_)) =>
            {
                return Self::new("CAST_INVALID_INPUT", "22018", detail);
            }
            DataFusionError::NotImplemented(_) => return Self::unsupported(detail),
            _ => {}
        }
        let lower = detail.to_lowercase();
        if lower.starts_with("table '") && lower.ends_with("not found") {
            let name = detail.split('\'').nth(1).unwrap_or_default();
            return Self::table_not_found(name);
        }
        // Arrow's integer and decimal kernels (`%`, DECIMAL `/`).
        if lower.contains("divide by zero") {
            return Self::divide_by_zero();
        }
        if lower.contains("cast error") {
            return Self::new("CAST_INVALID_INPUT", "22018", detail);
        }
        if lower.contains("already exists") && lower.contains("schema") {
            return Self::new("SCHEMA_ALREADY_EXISTS", "42P06", detail);
        }
        if lower.contains("already exists") {
            return Self::new("TABLE_OR_VIEW_ALREADY_EXISTS", "42P07", detail);
        }
        let missing = ["doesn't exist", "does not exist", "not found"]
            .iter()
            .any(|m| lower.contains(m))
            || lower.starts_with("missing ");
        if missing && lower.contains("catalog") {
            return Self::new("NO_SUCH_CATALOG_EXCEPTION", "42704", detail);
        }
        if missing && lower.contains("schema") {
            return Self::new("SCHEMA_NOT_FOUND", "42704", detail);
        }
        if matches!(
            root,
            DataFusionError::Plan(_) | DataFusionError::SchemaError(..)
        ) {
            return Self::new("INVALID_STATEMENT", "42000", detail);
        }
        Self {
            class: None,
            sql_state: None,
            detail,
        }
    }
}

impl SqlError {
    pub(crate) fn table_not_found(name: &str) -> Self {
        Self::new(
            "TABLE_OR_VIEW_NOT_FOUND",
            "42P01",
            format!(
                "The table or view `{}` cannot be found. Verify the spelling and correctness of the \
                 schema and catalog.",
                name.replace('.', "`.`")
            ),
        )
    }
}

/// DataFusion prefixes messages with the error kind ("Error during planning: "), which means
/// nothing to a Databricks user.
fn strip_prefixes(text: &str) -> &str {
    const PREFIXES: [&str; 7] = [
        "Error during planning: ",
        "Execution error: ",
        "Schema error: ",
        "This feature is not implemented: ",
        "Arrow error: ",
        "Invalid or Unsupported Configuration: ",
        "Internal error: ",
    ];
    PREFIXES
        .iter()
        .find_map(|p| text.strip_prefix(p))
        .unwrap_or(text)
}
