//! Process definitions in YAML: parsing and validation into [`crate::engine::Definition`].
//!
//! Works on text, never on files (the caller reads them), so it stays pure.
//! Every problem is collected and reported at once, each with file, line,
//! column and the field path, the way a compiler reports errors.

mod parse;
mod validate;

use std::fmt;

use crate::engine::Definition;

/// One problem in a definition, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// Field path, e.g. `steps[2].await[0].goto`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}: {}",
            self.file, self.line, self.column, self.path, self.message
        )
    }
}

/// All problems found in one definition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Parses and validates one definition; `file` names it in diagnostics.
pub fn parse(file: &str, source: &str) -> Result<Definition, Diagnostics> {
    let mut p = parse::Parser::new(file);
    let parsed = p.definition(source);
    let mut diags = p.diagnostics;
    if let Some((def, locs)) = &parsed {
        diags.extend(validate::validate(file, def, locs));
    }
    diags.sort_by_key(|d| (d.line, d.column));
    diags.dedup();
    match parsed {
        Some((def, _)) if diags.is_empty() => Ok(def),
        _ => Err(Diagnostics(diags)),
    }
}
