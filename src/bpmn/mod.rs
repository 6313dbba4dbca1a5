//! `baton import`: BPMN 2.0 models (as Camunda Modeler and bpmn-js write
//! them) translated into process definitions.
//!
//! - [`model`] reads the XML into a small BPMN model, every element with its line;
//! - [`translate`] turns one process of it into a [`yaml::Doc`], reporting
//!   what it cannot translate;
//! - [`feel`] translates FEEL conditions of the simple kind into CEL;
//! - [`timer`] turns ISO 8601 durations and dates into baton's;
//! - [`mapping`] reads the optional mapping file (topics, event types, commands);
//! - [`yaml`] writes the definition as readable YAML.
//!
//! [`import`] runs them and checks the YAML the way `baton validate` does.
//! Text in, text out: the caller reads and writes files. Nothing here
//! touches the engine's model; the result is a definition's source text.

pub mod feel;
pub mod mapping;
pub mod model;
pub mod timer;
pub mod translate;
pub mod yaml;

use std::fmt;

pub use mapping::{Mapping, MappingError};
pub use model::ReadError;

use crate::dsl;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Something the model says that the definition does not: the import fails.
    Error,
    /// Something without a counterpart that changes nothing baton does
    /// (a lane, a colour-only extension, a data object).
    Warning,
}

/// One element the import could not translate (or translated with a caveat).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub line: usize,
    /// The BPMN element's id.
    pub id: String,
    pub name: Option<String>,
    /// What the element is, e.g. `inclusive gateway`.
    pub what: String,
    pub message: String,
}

impl Problem {
    /// The problem as a compiler would print it: `file:line: error: ...`.
    pub fn render(&self, file: &str) -> String {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let name = self
            .name
            .as_ref()
            .map(|n| format!(" (\"{n}\")"))
            .unwrap_or_default();
        format!(
            "{file}:{}: {level}: {} `{}`{name}: {}",
            self.line, self.what, self.id, self.message
        )
    }
}

/// What `baton import` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The process to translate (its id), when the file holds several.
    pub process: Option<String>,
    pub mapping: Mapping,
    /// Write the definition even when elements could not be translated:
    /// flows into them become incidents, for a person to finish the job.
    pub keep_going: bool,
}

/// A translated definition.
#[derive(Debug, Clone)]
pub struct Import {
    /// The process name (the BPMN process id).
    pub process: String,
    /// The definition's YAML.
    pub yaml: String,
    /// Warnings, and with [`Options::keep_going`] the errors too.
    pub problems: Vec<Problem>,
    /// The YAML passes `baton validate` (with untranslated elements left
    /// out, under [`Options::keep_going`], it still may).
    pub valid: bool,
}

impl Import {
    /// The problems that are errors.
    pub fn errors(&self) -> impl Iterator<Item = &Problem> {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
    }
}

/// Why nothing (or nothing valid) came of an import.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("{file}: {source}")]
    Read { file: String, source: ReadError },
    #[error("{file}: no process with flow elements in the model")]
    NoProcess { file: String },
    #[error("{file}: the model holds several processes ({}); choose one with --process", .ids.join(", "))]
    SeveralProcesses { file: String, ids: Vec<String> },
    #[error("{file}: no process `{id}` in the model (it holds: {})", .ids.join(", "))]
    UnknownProcess {
        file: String,
        id: String,
        ids: Vec<String>,
    },
    /// Elements that could not be translated, every one of them.
    #[error("{}", Rendered(.file, .problems))]
    Untranslatable {
        file: String,
        problems: Vec<Problem>,
    },
}

struct Rendered<'a>(&'a str, &'a [Problem]);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", p.render(self.0))?;
        }
        Ok(())
    }
}

/// Translates one process of the BPMN model `xml` (named `file` in
/// reports) into a definition's YAML, and checks it as `baton validate`
/// does. Every element that is not translated is reported with its id,
/// name and line; any such error fails the import unless
/// [`Options::keep_going`] is set.
pub fn import(file: &str, xml: &str, opts: &Options) -> Result<Import, ImportError> {
    let model = model::Model::read(xml).map_err(|source| ImportError::Read {
        file: file.to_string(),
        source,
    })?;
    let with_flow: Vec<&model::Process> = model
        .processes
        .iter()
        .filter(|p| !p.scope.elements.is_empty())
        .collect();
    let ids = || with_flow.iter().map(|p| p.item.id.clone()).collect();
    let process = match (&opts.process, with_flow.as_slice()) {
        (Some(id), _) => model
            .processes
            .iter()
            .find(|p| &p.item.id == id)
            .ok_or_else(|| ImportError::UnknownProcess {
                file: file.to_string(),
                id: id.clone(),
                ids: ids(),
            })?,
        (None, [one]) => *one,
        (None, []) => {
            return Err(ImportError::NoProcess {
                file: file.to_string(),
            });
        }
        (None, _) => {
            return Err(ImportError::SeveralProcesses {
                file: file.to_string(),
                ids: ids(),
            });
        }
    };
    let (doc, mut problems) = translate::translate(file, &model, process, &opts.mapping);
    let yaml = yaml::write(&doc);
    let name = format!("{} (imported)", file);
    let checked = dsl::parse(&name, &yaml);
    if let Err(diags) = &checked {
        for d in &diags.0 {
            problems.push(translate::invalid(process, &yaml, d));
        }
    }
    problems.sort_by(|a, b| (a.line, a.severity, &a.id).cmp(&(b.line, b.severity, &b.id)));
    problems.dedup();
    let failed = problems.iter().any(|p| p.severity == Severity::Error);
    if failed && !opts.keep_going {
        return Err(ImportError::Untranslatable {
            file: file.to_string(),
            problems,
        });
    }
    Ok(Import {
        process: doc.process,
        yaml,
        problems,
        valid: checked.is_ok(),
    })
}
