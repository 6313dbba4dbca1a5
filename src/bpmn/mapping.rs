//! The mapping file of `baton import --mapping FILE.toml`: what a BPMN model
//! drawn for another engine does not say (the topic of a command, the
//! CloudEvents type of a message named for people), kept beside the model
//! so the model stays as the analysts drew it.
//!
//! ```toml
//! # The topic of each command type: an exact type, else the longest
//! # matching pattern.
//! [topics]
//! "com.acme.inventory.*" = "erp.commands"
//!
//! # The CloudEvents type of a BPMN message or error, by its name or id.
//! [events]
//! "Payment received" = "com.acme.payment.charged"
//!
//! # The command of an element, by element id; `data` leaves are CEL.
//! [commands.reserve]
//! topic = "erp.commands"
//! type = "com.acme.inventory.reserve"
//! data = { order = "key", lines = "vars.lines" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::yaml::Data;
use crate::engine::Pattern;

/// A mapping file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct MappingError {
    pub file: String,
    pub message: String,
}

/// What the mapping file says.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    #[serde(default)]
    topics: BTreeMap<String, String>,
    #[serde(default)]
    events: BTreeMap<String, String>,
    #[serde(default)]
    commands: BTreeMap<String, CommandMapping>,
}

/// `[commands.<element id>]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMapping {
    pub topic: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub data: Option<toml::Value>,
}

impl Mapping {
    /// Reads a mapping file; `file` names it in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Mapping, MappingError> {
        let m: Mapping = toml::from_str(text).map_err(|e| MappingError {
            file: file.to_string(),
            message: e.to_string().trim().to_string(),
        })?;
        for (id, c) in &m.commands {
            if let Some(d) = &c.data {
                data(d).map_err(|why| MappingError {
                    file: file.to_string(),
                    message: format!("commands.{id}.data: {why}"),
                })?;
            }
        }
        Ok(m)
    }

    /// The topic of a command type: an exact entry, else the longest
    /// pattern that matches.
    pub fn topic(&self, kind: &str) -> Option<&str> {
        if let Some(t) = self.topics.get(kind) {
            return Some(t);
        }
        self.topics
            .iter()
            .filter(|(p, _)| Pattern::new(p).matches(kind))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, t)| t.as_str())
    }

    /// The event type of a message or error, by its name or else its id.
    pub fn event(&self, name: Option<&str>, id: &str) -> Option<&str> {
        name.and_then(|n| self.events.get(n))
            .or_else(|| self.events.get(id))
            .map(String::as_str)
    }

    /// The command mapped to an element.
    pub fn command(&self, element: &str) -> Option<&CommandMapping> {
        self.commands.get(element)
    }
}

impl CommandMapping {
    /// The payload tree (checked when the file was read).
    pub fn data(&self) -> Option<Data> {
        self.data.as_ref().and_then(|d| data(d).ok())
    }
}

fn data(v: &toml::Value) -> Result<Data, String> {
    Ok(match v {
        toml::Value::String(s) => Data::Expr(s.clone()),
        toml::Value::Integer(i) => Data::Expr(i.to_string()),
        toml::Value::Float(f) => Data::Expr(f.to_string()),
        toml::Value::Boolean(b) => Data::Expr(b.to_string()),
        toml::Value::Array(items) => Data::List(items.iter().map(data).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => Data::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), data(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        toml::Value::Datetime(d) => {
            return Err(format!(
                "`{d}` is a TOML date; write the CEL as a string, e.g. \"timestamp('{d}')\""
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_take_the_exact_type_then_the_longest_pattern() {
        let m = Mapping::from_toml(
            "m.toml",
            r#"
[topics]
"com.acme.*" = "all.commands"
"com.acme.payment.*" = "payments.commands"
"com.acme.payment.refund" = "refunds.commands"
"#,
        )
        .expect("valid");
        assert_eq!(m.topic("com.acme.payment.refund"), Some("refunds.commands"));
        assert_eq!(
            m.topic("com.acme.payment.charge"),
            Some("payments.commands")
        );
        assert_eq!(m.topic("com.acme.mail.send"), Some("all.commands"));
        assert_eq!(m.topic("org.other.x"), None);
    }

    #[test]
    fn unknown_sections_and_bad_data_are_errors() {
        let err = Mapping::from_toml("m.toml", "[topic]\nx = \"y\"\n").expect_err("typo");
        assert!(err.message.contains("unknown field `topic`"), "{err}");
        let err = Mapping::from_toml(
            "m.toml",
            "[commands.a]\ntype = \"t\"\ndata = { at = 2026-01-01T00:00:00Z }\n",
        )
        .expect_err("a date is not CEL");
        assert!(
            err.to_string().starts_with("m.toml: commands.a.data: "),
            "{err}"
        );
    }
}
