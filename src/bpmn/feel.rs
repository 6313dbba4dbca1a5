//! FEEL (the expression language of BPMN and DMN, as Camunda writes gateway
//! conditions) translated to CEL, for the simple kind of expression only.
//!
//! Translated: numbers, strings, `true`/`false`/`null`, names and paths
//! (`total`, `order.total`: process variables, so `vars.total`), comparisons
//! (`=` becomes `==`), `and`/`or`/`not(...)`, arithmetic and parentheses.
//! Anything else (function calls, `if`, `for`, `some`, `in`, ranges,
//! filters, temporal literals, names with spaces) is refused with the
//! reason, never guessed.

use std::fmt::Write as _;

/// A FEEL expression that is not translated, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("FEEL `{text}` is not translated to CEL: {reason}")]
pub struct FeelError {
    pub text: String,
    pub reason: String,
}

/// Translates a FEEL expression (with or without Camunda's leading `=`)
/// into CEL.
pub fn to_cel(feel: &str) -> Result<String, FeelError> {
    let text = feel.trim();
    let text = text.strip_prefix('=').unwrap_or(text).trim();
    let fail = |reason: String| FeelError {
        text: feel.trim().to_string(),
        reason,
    };
    if text.is_empty() {
        return Err(fail("it is empty".into()));
    }
    let tokens = lex(text).map_err(fail)?;
    let mut p = Parser { tokens, at: 0 };
    let ast = p.disjunction().map_err(fail)?;
    if let Some(t) = p.peek() {
        return Err(fail(format!(
            "unexpected {} after a whole expression",
            t.show()
        )));
    }
    let mut out = String::new();
    emit(&ast, &mut out);
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(String),
    Str(String),
    Name(String),
    Op(&'static str),
    Open,
    Close,
    Dot,
}

impl Token {
    fn show(&self) -> String {
        match self {
            Token::Number(n) => format!("number {n}"),
            Token::Str(s) => format!("string \"{s}\""),
            Token::Name(n) => format!("`{n}`"),
            Token::Op(o) => format!("`{o}`"),
            Token::Open => "`(`".into(),
            Token::Close => "`)`".into(),
            Token::Dot => "`.`".into(),
        }
    }
}

fn lex(s: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
        let op = match two.as_str() {
            "!=" => Some("!="),
            "<=" => Some("<="),
            ">=" => Some(">="),
            "**" => return Err("exponentiation (`**`) has no CEL operator".into()),
            ".." => return Err("ranges (`..`) are not translated".into()),
            _ => None,
        };
        if let Some(op) = op {
            out.push(Token::Op(op));
            i += 2;
            continue;
        }
        match c {
            '=' => out.push(Token::Op("=")),
            '<' => out.push(Token::Op("<")),
            '>' => out.push(Token::Op(">")),
            '+' => out.push(Token::Op("+")),
            '-' => out.push(Token::Op("-")),
            '*' => out.push(Token::Op("*")),
            '/' => out.push(Token::Op("/")),
            '(' => out.push(Token::Open),
            ')' => out.push(Token::Close),
            '.' if chars.get(i + 1).is_some_and(char::is_ascii_digit) => {
                let (n, end) = number(&chars, i);
                out.push(Token::Number(n));
                i = end;
                continue;
            }
            '.' => out.push(Token::Dot),
            '"' => {
                let (s, end) = string(&chars, i)?;
                out.push(Token::Str(s));
                i = end;
                continue;
            }
            '[' => return Err("lists and filters (`[...]`) are not translated".into()),
            '{' => return Err("contexts (`{...}`) are not translated".into()),
            '@' => return Err("temporal literals (`@\"...\"`) are not translated".into()),
            '`' => return Err("names in backticks are not translated".into()),
            ',' => return Err("lists of arguments (`,`) are not translated".into()),
            c if c.is_ascii_digit() => {
                let (n, end) = number(&chars, i);
                out.push(Token::Number(n));
                i = end;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                out.push(word_token(word)?);
                continue;
            }
            other => return Err(format!("`{other}` is not translated")),
        }
        i += 1;
    }
    Ok(out)
}

/// A word: an operator, a name, or FEEL syntax that is not translated.
fn word_token(word: String) -> Result<Token, String> {
    let unsupported = |what: &str| Err(format!("`{word}` ({what}) is not translated"));
    match word.as_str() {
        "and" => Ok(Token::Op("and")),
        "or" => Ok(Token::Op("or")),
        "if" | "then" | "else" => unsupported("a conditional"),
        "for" | "return" => unsupported("a loop"),
        "some" | "every" | "satisfies" => unsupported("a quantifier"),
        "in" => unsupported("a membership test"),
        "between" => unsupported("a range test"),
        "instance" | "of" => unsupported("a type test"),
        "function" | "external" => unsupported("a function definition"),
        _ => Ok(Token::Name(word)),
    }
}

fn number(chars: &[char], mut i: usize) -> (String, usize) {
    let start = i;
    while i < chars.len() && chars[i].is_ascii_digit() {
        i += 1;
    }
    if i < chars.len() && chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
        i += 1;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
    }
    let text: String = chars[start..i].iter().collect();
    let text = if text.starts_with('.') {
        format!("0{text}")
    } else {
        text
    };
    (text, i)
}

fn string(chars: &[char], start: usize) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '"' => return Ok((out, i + 1)),
            '\\' => {
                let c = chars.get(i + 1).ok_or("a string ends in `\\`")?;
                match c {
                    '"' | '\\' | '\'' => out.push(*c),
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    other => return Err(format!("the escape `\\{other}` is not translated")),
                }
                i += 2;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Err("a string is not closed".into())
}

#[derive(Debug, Clone, PartialEq)]
enum Ast {
    Literal(String),
    /// A process variable and the fields read from it.
    Path(Vec<String>),
    Not(Box<Ast>),
    Neg(Box<Ast>),
    Binary(&'static str, Box<Ast>, Box<Ast>),
}

/// Binding strength in CEL (which orders these operators as FEEL does).
fn precedence(a: &Ast) -> u8 {
    match a {
        Ast::Binary(op, ..) => match *op {
            "||" => 1,
            "&&" => 2,
            "==" | "!=" | "<" | "<=" | ">" | ">=" => 3,
            "+" | "-" => 4,
            _ => 5,
        },
        Ast::Not(_) | Ast::Neg(_) => 6,
        Ast::Literal(_) | Ast::Path(_) => 7,
    }
}

fn emit(a: &Ast, out: &mut String) {
    let sub = |child: &Ast, min: u8, out: &mut String| {
        if precedence(child) < min {
            out.push('(');
            emit(child, out);
            out.push(')');
        } else {
            emit(child, out);
        }
    };
    match a {
        Ast::Literal(l) => out.push_str(l),
        Ast::Path(p) => {
            out.push_str("vars");
            for f in p {
                let _ = write!(out, ".{f}");
            }
        }
        Ast::Not(inner) => {
            out.push_str("!(");
            emit(inner, out);
            out.push(')');
        }
        Ast::Neg(inner) => {
            out.push('-');
            sub(inner, 6, out);
        }
        Ast::Binary(op, l, r) => {
            let p = precedence(a);
            sub(l, p, out);
            let _ = write!(out, " {op} ");
            // Left-associative: a right operand of the same strength keeps
            // its parentheses (`a - (b - c)`).
            sub(r, p + 1, out);
        }
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn take(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn eat_op(&mut self, ops: &[&'static str]) -> Option<&'static str> {
        match self.peek() {
            Some(Token::Op(o)) if ops.contains(o) => {
                let o = *o;
                self.at += 1;
                Some(o)
            }
            _ => None,
        }
    }

    fn disjunction(&mut self) -> Result<Ast, String> {
        let mut left = self.conjunction()?;
        while self.eat_op(&["or"]).is_some() {
            let right = self.conjunction()?;
            left = Ast::Binary("||", Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Ast, String> {
        let mut left = self.comparison()?;
        while self.eat_op(&["and"]).is_some() {
            let right = self.comparison()?;
            left = Ast::Binary("&&", Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn comparison(&mut self) -> Result<Ast, String> {
        let left = self.additive()?;
        let Some(op) = self.eat_op(&["=", "!=", "<", "<=", ">", ">="]) else {
            return Ok(left);
        };
        let right = self.additive()?;
        if let Some(Token::Op(o @ ("=" | "!=" | "<" | "<=" | ">" | ">="))) = self.peek() {
            return Err(format!(
                "chained comparisons (`{o}` after `{op}`) are not translated"
            ));
        }
        let op = if op == "=" { "==" } else { op };
        Ok(Ast::Binary(op, Box::new(left), Box::new(right)))
    }

    fn additive(&mut self) -> Result<Ast, String> {
        let mut left = self.multiplicative()?;
        while let Some(op) = self.eat_op(&["+", "-"]) {
            let right = self.multiplicative()?;
            left = Ast::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn multiplicative(&mut self) -> Result<Ast, String> {
        let mut left = self.unary()?;
        while let Some(op) = self.eat_op(&["*", "/"]) {
            let right = self.unary()?;
            left = Ast::Binary(op, Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Ast, String> {
        if self.eat_op(&["-"]).is_some() {
            return Ok(Ast::Neg(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Ast, String> {
        let Some(t) = self.take() else {
            return Err("it ends where an operand should follow".into());
        };
        let ast = match t {
            Token::Number(n) => Ast::Literal(n),
            Token::Str(s) => Ast::Literal(cel_string(&s)),
            Token::Open => {
                let inner = self.disjunction()?;
                match self.take() {
                    Some(Token::Close) => inner,
                    _ => return Err("a `(` is not closed".into()),
                }
            }
            Token::Name(n) if n == "true" || n == "false" || n == "null" => Ast::Literal(n),
            Token::Name(n) if n == "not" && self.peek() == Some(&Token::Open) => {
                self.at += 1;
                let inner = self.disjunction()?;
                if self.take() != Some(Token::Close) {
                    return Err("`not(` takes one condition and a `)`".into());
                }
                Ast::Not(Box::new(inner))
            }
            Token::Name(n) => {
                if self.peek() == Some(&Token::Open) {
                    return Err(format!(
                        "function calls (`{n}(...)`) are not translated; only `not(...)` is"
                    ));
                }
                if let Some(Token::Name(next)) = self.peek() {
                    return Err(format!(
                        "names with spaces (`{n} {next}`) are not translated"
                    ));
                }
                Ast::Path(vec![n])
            }
            other => return Err(format!("{} cannot start an operand", other.show())),
        };
        self.path(ast)
    }

    /// `.field` after an operand: fields of a variable.
    fn path(&mut self, mut ast: Ast) -> Result<Ast, String> {
        while self.peek() == Some(&Token::Dot) {
            self.at += 1;
            match (self.take(), &mut ast) {
                (Some(Token::Name(f)), Ast::Path(p)) => p.push(f),
                (Some(Token::Name(f)), _) => {
                    return Err(format!(
                        "`.{f}` on something other than a variable is not translated"
                    ));
                }
                _ => return Err("a `.` must be followed by a name".into()),
            }
        }
        Ok(ast)
    }
}

/// A CEL string literal in single quotes.
fn cel_string(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A gateway condition as CEL: CEL when its `language` says so, FEEL
/// otherwise (JUEL and scripting languages are refused); checked to
/// compile and to read only what a condition may.
pub fn condition(text: &str, language: Option<&str>) -> Result<String, String> {
    let text = text.trim();
    let cel = if is_cel(language) {
        text.to_string()
    } else {
        match language.map(str::to_ascii_lowercase) {
            None => {}
            Some(l) if l.contains("feel") => {}
            Some(l) => {
                return Err(format!(
                    "conditions in `{l}` are not translated: write FEEL, or CEL with language=\"cel\""
                ));
            }
        }
        if text.starts_with("${") || text.starts_with("#{") {
            return Err(format!(
                "`{text}` is a JUEL expression (Camunda 7), which is not translated: write FEEL, or CEL with language=\"cel\""
            ));
        }
        to_cel(text).map_err(|e| e.to_string())?
    };
    match crate::engine::Expr::parse(&cel) {
        Ok(e) if e.uses_event() => Err(format!(
            "the condition `{cel}` reads the event, which a gateway does not have: copy what it needs into vars where the event arrives"
        )),
        Ok(e) if !e.unknown_roots().is_empty() => Err(format!(
            "the condition `{cel}` reads `{}`; conditions may use {}",
            e.unknown_roots().join("`, `"),
            crate::engine::ROOTS.join(", ")
        )),
        Ok(_) => Ok(cel),
        Err(why) => Err(format!("the condition `{cel}` is not valid CEL: {why}")),
    }
}

/// Whether a `language` attribute says CEL (`cel`, or a cel.dev URL).
pub fn is_cel(language: Option<&str>) -> bool {
    language.is_some_and(|l| {
        l.eq_ignore_ascii_case("cel") || l.to_ascii_lowercase().contains("cel.dev")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_conditions_become_cel() {
        let cases = [
            ("=total > 10000", "vars.total > 10000"),
            ("total > 10000", "vars.total > 10000"),
            ("= approved = true", "vars.approved == true"),
            ("decision != \"reject\"", "vars.decision != 'reject'"),
            (
                "=repeats > repeatsAtRecovery and runs < 3",
                "vars.repeats > vars.repeatsAtRecovery && vars.runs < 3",
            ),
            ("a or b and c", "vars.a || vars.b && vars.c"),
            ("(a or b) and c", "(vars.a || vars.b) && vars.c"),
            ("not(approved)", "!(vars.approved)"),
            ("not(a = 1 or b = 2)", "!(vars.a == 1 || vars.b == 2)"),
            ("order.total >= 2.5", "vars.order.total >= 2.5"),
            ("x <= .5", "vars.x <= 0.5"),
            ("a - (b - c) = 0", "vars.a - (vars.b - vars.c) == 0"),
            ("(a - b) - c = 0", "vars.a - vars.b - vars.c == 0"),
            ("a * (b + 1) > -c", "vars.a * (vars.b + 1) > -vars.c"),
            ("reason = null", "vars.reason == null"),
            (
                "name = \"O'Brien \\\"jr\\\"\"",
                "vars.name == 'O\\'Brien \"jr\"'",
            ),
            ("x / 2 != 3", "vars.x / 2 != 3"),
        ];
        for (feel, cel) in cases {
            assert_eq!(to_cel(feel).as_deref(), Ok(cel), "{feel}");
            // What comes out is CEL the engine compiles.
            crate::engine::Expr::parse(cel).unwrap_or_else(|e| panic!("{cel}: {e}"));
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        let cases = [
            ("", "empty"),
            ("=", "empty"),
            ("count(items) > 1", "function calls"),
            ("if a then b else c", "a conditional"),
            ("x in [1..3]", "membership"),
            ("x in items", "membership"),
            ("a[1..3]", "lists and filters"),
            ("max(a, b) > 1", "lists of arguments"),
            ("x between 1 and 3", "range test"),
            ("some i in items satisfies i > 1", "quantifier"),
            ("for i in items return i", "a loop"),
            ("items[1]", "lists and filters"),
            ("date = @\"2026-01-01\"", "temporal literals"),
            ("order total > 5", "names with spaces"),
            ("2 ** 3 = 8", "exponentiation"),
            ("{a: 1}.a = 1", "contexts"),
            ("a < b < c", "chained comparisons"),
            ("(a > 1", "not closed"),
            ("a >", "ends where an operand"),
            ("a b", "names with spaces"),
            ("x instance of number", "type test"),
            ("\"abc", "not closed"),
            ("a # b", "`#`"),
        ];
        for (feel, reason) in cases {
            let err = to_cel(feel).expect_err(feel);
            assert!(err.reason.contains(reason), "{feel}: {}", err.reason);
            assert!(
                err.to_string().contains("is not translated to CEL"),
                "{err}"
            );
        }
    }
}
