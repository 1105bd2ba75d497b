//! `${VAR}` and `${VAR:-default}` in job files, substituted into the parsed values, never into the
//! TOML text.
//!
//! A value from the environment is data: it must not be able to change the file's structure (a
//! `JOBNAME` of `x"` + newline + `channel_bytes = 0` must not add a key), and it must not reach a
//! message (a secret in an error). So:
//!
//! 1. [`Prepared::new`] scans the text as TOML's lexer would (strings, comments) and leaves
//!    `${…}` inside strings as they are. A `${…}` outside quotes (`rows = ${ROWS:-1000}`) is
//!    replaced by a *marker*: a quoted string of the same length in characters, made of
//!    private-use characters, whose second character numbers the placeholder. Only text from the
//!    file itself and these constants go into the text that is parsed: no value from the
//!    environment ever does, so none can be misparsed, and none can show in a parse error (whose
//!    excerpt of the line has the `${…}` put back, at the same column).
//! 2. The text is parsed (`toml::de::DeTable`, which keeps the spans for line numbers).
//! 3. [`Prepared::resolve`] walks the parsed values: in every string, `${…}` is substituted (the
//!    result stays one string, whatever it holds); a marker becomes the variable's value read as
//!    one TOML scalar on its own (a number or `true`/`false`; anything else is an error), so it
//!    can take a number's place and still cannot add a key. A `${…}` outside quotes anywhere but
//!    as a whole value (a key, a table name, next to other text) is an error.
//! 4. Every value taken from the environment is remembered ([`Interpolated`]); errors about the
//!    file (parsing, typing, building the pipeline) show `${VAR}` in its place.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use alluvium_core::{Error, Result};

/// Where a job file's variables come from.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Starts a marker, and pads it to the length of the `${…}` it stands for.
const MARK: char = '\u{E000}';
/// The marker's second character is this plus the placeholder's number (Unicode's private use
/// plane 15: U+F0000 to U+FFFFD).
const FIRST_INDEX: u32 = 0xF_0000;
/// Unquoted placeholders a file may have.
const MAX_BARE: usize = 0xFFFE;

/// The index of the `}` closing a `${` whose body starts `body`, counting nested `${…}`.
pub(crate) fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'{' if i > 0 && bytes[i - 1] == b'$' => depth += 1,
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The line (from 1) of byte `at` of `text`.
pub(crate) fn line_of(text: &str, at: usize) -> usize {
    text.get(..at).unwrap_or(text).matches('\n').count() + 1
}

/// Replaces `${VAR}` and `${VAR:-default}` in `text` with values from `env` (`$$` stands for `$`);
/// the variables taken from the environment are added to `used` as (name, value). An error is
/// the byte offset in `text` of the `${` it is about, and what is wrong (never a variable's value).
pub(crate) fn expand(text: &str, env: Env, used: &mut Vec<(String, String)>) -> std::result::Result<String, (usize, String)> {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(i) = text[pos..].find('$') {
        let at = pos + i;
        out.push_str(&text[pos..at]);
        let after = &text[at + 1..];
        if after.starts_with('$') {
            out.push('$');
            pos = at + 2;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = closing_brace(body).ok_or_else(|| (at, "`${` without a closing `}`".to_string()))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((at, format!("`${{{expr}}}` is not a variable reference; write ${{NAME}} or ${{NAME:-default}}")));
            }
            match (env(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => {
                    out.push_str(&v);
                    used.push((name.to_string(), v));
                }
                (None, Some(d)) => out.push_str(&expand(d, env, used).map_err(|(_, m)| (at, m))?),
                (None, None) => {
                    return Err((
                        at,
                        format!("environment variable `{name}` is not set; set it, or give a default with ${{{name}:-default}}"),
                    ))
                }
            }
            pos = at + 2 + end + 1;
        } else {
            out.push('$');
            pos = at + 1;
        }
    }
    out.push_str(&text[pos..]);
    Ok(out)
}

/// The values a job file took from the environment, each with what to show instead: `${VAR}`,
/// or the text of the value in the file (`${OUT}/ckpt`). Messages about the file show those.
#[derive(Clone, Default)]
pub(crate) struct Interpolated {
    shown: HashMap<String, String>,
}

impl fmt::Debug for Interpolated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the values.
        write!(f, "Interpolated({} values)", self.shown.len())
    }
}

impl Interpolated {
    /// Remembers `value`, to be shown as `shown`.
    fn add(&mut self, value: &str, shown: &str) {
        if !value.is_empty() && value != shown {
            self.shown.entry(value.to_string()).or_insert_with(|| shown.to_string());
        }
    }

    /// Remembers what one expansion took from the environment: each variable's value, and the
    /// whole result (`value`) as the text it came from (`template`).
    fn add_expansion(&mut self, value: &str, template: &str, used: Vec<(String, String)>) {
        if used.is_empty() {
            return;
        }
        self.add(value, template);
        for (name, v) in used {
            self.add(&v, &format!("${{{name}}}"));
        }
    }

    /// `text` with every remembered value replaced by what to show. Values of 4 characters or
    /// more are replaced wherever they appear (also as Rust or JSON would escape them: serde's
    /// messages quote strings so); shorter ones, and numbers and booleans, only where quoted
    /// (`` `1` ``, `"ab"`), as they would otherwise hide ordinary words and numbers (a range).
    pub(crate) fn hide(&self, text: &str) -> String {
        let mut values: Vec<(&String, &String)> = self.shown.iter().collect();
        // Longest first: a value that contains another is replaced whole.
        values.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(b.0)));
        let mut out = text.to_string();
        for (value, shown) in values {
            let debug = format!("{value:?}");
            let escaped = &debug[1..debug.len() - 1];
            let forms: Vec<&str> = if escaped == value.as_str() { vec![value.as_str()] } else { vec![value.as_str(), escaped] };
            for form in forms {
                if value.chars().count() >= 4 && !plain(value) {
                    if out.contains(form) {
                        out = out.replace(form, shown);
                    }
                } else {
                    for (open, close) in [("`", "`"), ("\"", "\""), ("'", "'")] {
                        let quoted = format!("{open}{form}{close}");
                        if out.contains(&quoted) {
                            out = out.replace(&quoted, &format!("{open}{shown}{close}"));
                        }
                    }
                }
            }
        }
        out
    }

    /// `e` with the remembered values hidden in its message (its kind and retry hint kept).
    pub(crate) fn hide_error(&self, e: Error) -> Error {
        if self.shown.is_empty() {
            return e;
        }
        Error::new(e.kind(), self.hide(&e.to_string())).with_retryable(e.is_retryable())
    }
}

/// Whether `value` is a number or a boolean (`1000`, `-2.5e3`, `true`): words a message may hold
/// for other reasons.
fn plain(value: &str) -> bool {
    value == "true" || value == "false" || value.chars().all(|c| c.is_ascii_digit() || "+-._eE".contains(c))
}

/// An unquoted `${…}` of the file.
struct Bare {
    /// As written in the file.
    expr: String,
    /// What stands in its place in the text parsed, without the quotes.
    marker: String,
    /// Its value.
    value: String,
}

/// A job file's text ready to parse: see the module docs.
pub(crate) struct Prepared {
    /// The text with every unquoted `${…}` replaced by its marker (a quoted string).
    pub text: String,
    bare: Vec<Bare>,
    /// What the unquoted `${…}` took from the environment.
    pub hidden: Interpolated,
}

/// Where the lexer is.
#[derive(Clone, Copy, PartialEq)]
enum Lex {
    Code,
    Comment,
    Basic,
    Literal,
    MultiBasic,
    MultiLiteral,
}

impl Prepared {
    /// Scans `text`: the unquoted `${…}` are expanded now (their errors name the line) and
    /// replaced by markers.
    pub(crate) fn new(text: &str, env: Env) -> Result<Self> {
        if let Some(at) = text.find(MARK) {
            return Err(Error::config(format!(
                "line {}: the character U+E000 is reserved (it stands for `${{…}}` while the file is parsed); remove it",
                line_of(text, at)
            )));
        }
        let b = text.as_bytes();
        let mut out = String::with_capacity(text.len());
        let mut bare = Vec::new();
        let mut hidden = Interpolated::default();
        let (mut i, mut copied, mut state) = (0usize, 0usize, Lex::Code);
        while i < b.len() {
            let rest = &b[i..];
            match state {
                Lex::Code => match b[i] {
                    b'#' => {
                        state = Lex::Comment;
                        i += 1;
                    }
                    b'"' if rest.starts_with(b"\"\"\"") => {
                        state = Lex::MultiBasic;
                        i += 3;
                    }
                    b'"' => {
                        state = Lex::Basic;
                        i += 1;
                    }
                    b'\'' if rest.starts_with(b"'''") => {
                        state = Lex::MultiLiteral;
                        i += 3;
                    }
                    b'\'' => {
                        state = Lex::Literal;
                        i += 1;
                    }
                    b'$' if rest.starts_with(b"${") => {
                        // Counted only for an error: a file may have many of these.
                        let line = || line_of(text, i);
                        let end = closing_brace(&text[i + 2..])
                            .ok_or_else(|| Error::config(format!("line {}: `${{` without a closing `}}`", line())))?;
                        let expr = &text[i..i + 2 + end + 1];
                        if expr.contains(['\n', '\r']) {
                            return Err(Error::config(format!("line {}: `${{` without a closing `}}` on its line", line())));
                        }
                        if bare.len() >= MAX_BARE {
                            return Err(Error::config(format!(
                                "line {}: more than {MAX_BARE} `${{…}}` outside quotes; quote them",
                                line()
                            )));
                        }
                        let mut used = Vec::new();
                        let value =
                            expand(expr, env, &mut used).map_err(|(_, m)| Error::config(format!("line {}: {m}", line())))?;
                        hidden.add_expansion(&value, expr, used);
                        let index = u32::try_from(bare.len()).ok().and_then(|k| char::from_u32(FIRST_INDEX + k));
                        let index = index.ok_or_else(|| Error::internal("placeholder numbers are in plane 15"))?;
                        // As long as `expr` in characters with its quotes: columns in messages stay right.
                        let mut marker = String::new();
                        marker.push(MARK);
                        marker.push(index);
                        for _ in 4..expr.chars().count() {
                            marker.push(MARK);
                        }
                        out.push_str(&text[copied..i]);
                        out.push('"');
                        out.push_str(&marker);
                        out.push('"');
                        i += expr.len();
                        copied = i;
                        bare.push(Bare { expr: expr.to_string(), marker, value });
                    }
                    _ => i += 1,
                },
                Lex::Comment => {
                    if b[i] == b'\n' {
                        state = Lex::Code;
                    }
                    i += 1;
                }
                Lex::Basic => match b[i] {
                    b'\\' => i += 2,
                    b'"' | b'\n' => {
                        state = Lex::Code;
                        i += 1;
                    }
                    _ => i += 1,
                },
                Lex::Literal => {
                    if b[i] == b'\'' || b[i] == b'\n' {
                        state = Lex::Code;
                    }
                    i += 1;
                }
                Lex::MultiBasic | Lex::MultiLiteral => {
                    let quote = if state == Lex::MultiBasic { b'"' } else { b'\'' };
                    if state == Lex::MultiBasic && b[i] == b'\\' {
                        i += 2;
                    } else if rest.starts_with(&[quote; 3]) {
                        // Up to two more quotes belong to the string: `"""a""""` is `a"`.
                        let run = rest.iter().take(5).take_while(|c| **c == quote).count();
                        i += run;
                        state = Lex::Code;
                    } else {
                        i += 1;
                    }
                }
            }
        }
        out.push_str(&text[copied..]);
        Ok(Self { text: out, bare, hidden })
    }

    /// The unquoted `${…}` whose marker is `s`.
    fn marker_of(&self, s: &str) -> Option<&Bare> {
        let mut chars = s.chars();
        if chars.next()? != MARK {
            return None;
        }
        let k = (chars.next()? as u32).checked_sub(FIRST_INDEX)?;
        let b = self.bare.get(usize::try_from(k).ok()?)?;
        (b.marker == s).then_some(b)
    }

    /// `text` (a message about the parsed text) with the markers put back as the `${…}` they stand for.
    pub(crate) fn restore(&self, text: &str) -> String {
        if !text.contains(MARK) {
            return text.to_string();
        }
        let mut out = text.to_string();
        for b in &self.bare {
            let quoted = format!("\"{}\"", b.marker);
            if out.contains(&quoted) {
                out = out.replace(&quoted, &b.expr);
            }
            if out.contains(&b.marker) {
                out = out.replace(&b.marker, &b.expr);
            }
        }
        // A piece of a marker, should a message quote one.
        out.replace(MARK, "")
    }

    /// A parse error of the prepared text as a config error: the markers put back, the values
    /// from the environment hidden.
    pub(crate) fn error(&self, hidden: &Interpolated, message: String) -> Error {
        Error::config(hidden.hide(&self.restore(&message)))
    }

    fn line(&self, at: usize) -> usize {
        line_of(&self.text, at)
    }

    /// Substitutes every `${…}` in the values of `table` (see the module docs); what came from
    /// the environment is added to `hidden`.
    pub(crate) fn resolve<'p>(&'p self, table: &mut DeTable<'p>, env: Env, hidden: &mut Interpolated) -> Result<()> {
        self.resolve_table(table, &mut Vec::new(), env, hidden)
    }

    fn resolve_table<'p>(
        &'p self,
        table: &mut DeTable<'p>,
        path: &mut Vec<String>,
        env: Env,
        hidden: &mut Interpolated,
    ) -> Result<()> {
        for (key, value) in table.iter_mut() {
            let name: &str = key.get_ref();
            if name.contains(MARK) {
                let shown = self.marker_of(name).map_or("${…}", |b| b.expr.as_str());
                return Err(Error::config(format!(
                    "line {}: `{shown}` stands for a key or a table's name; `${{…}}` works in values only",
                    self.line(key.span().start)
                )));
            }
            path.push(name.to_string());
            self.resolve_value(value, path, env, hidden)?;
            path.pop();
        }
        Ok(())
    }

    fn resolve_value<'p>(
        &'p self,
        value: &mut Spanned<DeValue<'p>>,
        path: &mut Vec<String>,
        env: Env,
        hidden: &mut Interpolated,
    ) -> Result<()> {
        let span = value.span();
        let replacement = match value.get_mut() {
            DeValue::String(s) => {
                let current: &str = s;
                if let Some(b) = self.marker_of(current) {
                    let typed = scalar(&b.value).ok_or_else(|| {
                        Error::config(format!(
                            "line {}: `{}` = {}: the variable's value is not a number or true/false, as a `${{…}}` \
                             outside quotes must be; put it in quotes (\"{}\") for text",
                            self.line(span.start),
                            path.join("."),
                            b.expr,
                            b.expr
                        ))
                    })?;
                    Some(typed)
                } else if current.contains(MARK) {
                    return Err(Error::config(format!(
                        "line {}: `{}`: a `${{…}}` outside quotes must be the whole value; put the whole value in quotes",
                        self.line(span.start),
                        path.join(".")
                    )));
                } else {
                    if current.contains('$') {
                        let mut used = Vec::new();
                        let expanded = expand(current, env, &mut used).map_err(|(_, m)| {
                            Error::config(format!("line {}: `{}`: {m}", self.line(span.start), path.join(".")))
                        })?;
                        hidden.add_expansion(&expanded, current, used);
                        *s = Cow::Owned(expanded);
                    }
                    None
                }
            }
            DeValue::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    path.push((i + 1).to_string());
                    self.resolve_value(item, path, env, hidden)?;
                    path.pop();
                }
                None
            }
            DeValue::Table(t) => {
                self.resolve_table(t, path, env, hidden)?;
                None
            }
            _ => None,
        };
        if let Some(v) = replacement {
            *value = Spanned::new(span, v);
        }
        Ok(())
    }
}

/// `value` read as one TOML number or boolean, on its own: nothing else is accepted, so the value
/// cannot be anything but that one scalar.
fn scalar(value: &str) -> Option<DeValue<'_>> {
    let v = value.trim();
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_alphanumeric() || b"_+-.".contains(&c)) {
        return None;
    }
    let parsed = DeValue::parse(v).ok()?.into_inner();
    matches!(parsed, DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_)).then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "N" => Some("42".into()),
            "EVIL" => Some("1\nx = 2".into()),
            "SECRET" => Some("s3cr\"et-value".into()),
            _ => None,
        }
    }

    #[test]
    fn markers_keep_columns_and_quoted_text_is_left_alone() {
        let text = "a = ${N}\nb = \"${N} ${SECRET}\" # ${NOT_SET}\nc = '${N}'\nd = \"\"\"x\n${N}\"\"\"\n";
        let p = Prepared::new(text, &env).unwrap();
        assert_eq!(p.bare.len(), 1, "{}", p.text);
        let first = p.text.lines().next().unwrap();
        assert_eq!(first.chars().count(), "a = ${N}".chars().count());
        assert!(!p.text.contains("42") && !p.text.contains("s3cr"), "no value in the parsed text");
        assert_eq!(p.restore(first), "a = ${N}");
        assert_eq!(p.text.lines().skip(1).collect::<Vec<_>>(), text.lines().skip(1).collect::<Vec<_>>());
    }

    #[test]
    fn unquoted_values_must_be_scalars() {
        assert!(matches!(scalar("42"), Some(DeValue::Integer(_))));
        assert!(matches!(scalar(" 1_000 "), Some(DeValue::Integer(_))));
        assert!(matches!(scalar("2.5e3"), Some(DeValue::Float(_))));
        assert!(matches!(scalar("true"), Some(DeValue::Boolean(true))));
        for bad in ["", "1\nx = 2", "\"s\"", "[1]", "{a = 1}", "1 # c", "1979-05-27", "abc"] {
            assert!(scalar(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn hidden_values_are_replaced_in_messages() {
        let mut h = Interpolated::default();
        h.add_expansion("/data/s3cr\"et-value/x", "${OUT}/x", vec![("OUT".into(), "/data/s3cr\"et-value".into())]);
        h.add_expansion("7", "${N}", vec![("N".into(), "7".into())]);
        let m = h.hide("invalid type: string \"/data/s3cr\\\"et-value/x\", at `7`, 17 rows; in /data/s3cr\"et-value");
        assert!(!m.contains("s3cr"), "{m}");
        assert!(m.contains("\"${OUT}/x\"") && m.contains("`${N}`") && m.contains("17 rows") && m.contains("${OUT}"), "{m}");
        assert_eq!(format!("{h:?}"), "Interpolated(3 values)");
        // A number is hidden where a message quotes it, not in other numbers.
        h.add_expansion("1024", "${LANES}", vec![("LANES".into(), "1024".into())]);
        assert_eq!(h.hide("`x` = `1024` is out of range; give 1 to 1024"), "`x` = `${LANES}` is out of range; give 1 to 1024");
    }
}
