//! The user's statement, as far as Sluice must understand it before it is queued: what
//! kind of statement it is, whether it is one statement, which output format and which
//! settings it names itself. ClickHouse parses it for real; this module only lexes it
//! (comments, string literals, quoted identifiers, heredocs and parentheses, so that a
//! `;` or a keyword inside any of them is never mistaken for structure) and reads the
//! top level.
//!
//! Kinds ([`Kind`]), by the statement's leading keyword after comments, whitespace and
//! opening parentheses:
//! - `read`: SELECT, WITH, SHOW (but SHOW PROCESSLIST, GRANTS, USERS, ROLES, QUOTAS,
//!   PROFILES, POLICIES, ACCESS and SHOW CREATE of those are `admin`), DESCRIBE/DESC,
//!   EXISTS, EXPLAIN, CHECK;
//! - `write`: INSERT, CREATE, ALTER, DROP, TRUNCATE, RENAME, OPTIMIZE, DELETE, UPDATE,
//!   EXCHANGE, UNDROP, REPLACE, MOVE;
//! - `admin`: KILL, SYSTEM, SET, USE, GRANT, REVOKE, ATTACH, DETACH, BACKUP, RESTORE,
//!   WATCH, BEGIN, COMMIT, ROLLBACK.
//!
//! Any other leading word is refused as an unknown statement.
//!
//! This module is pure: it never performs I/O.

pub mod types;

use std::ops::Range;

/// What a statement may do, by its leading keyword.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Read,
    Write,
    Admin,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Read, Kind::Write, Kind::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a text is not one statement Sluice can queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("the SQL is empty (only whitespace, comments or `;`)")]
    Empty,
    #[error(
        "the SQL holds more than one statement (a `;` is followed by more); submit one \
         statement per execution"
    )]
    MultiStatement,
    #[error(
        "`INTO OUTFILE` writes a file on the client's side; Sluice stores the result \
         itself: remove the clause and download the result"
    )]
    IntoOutfile,
    #[error("the SQL ends inside a {0}")]
    Unterminated(&'static str),
    #[error("`{0}` does not start a statement Sluice knows")]
    UnknownStatement(String),
}

/// One statement, read at its top level.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement<'a> {
    text: &'a str,
    /// End of the last token that is not a trailing `;`.
    end: usize,
    pub kind: Kind,
    /// The leading keyword, upper case (`SELECT`, `WITH`, `SHOW`, ...).
    pub keyword: String,
    /// `FORMAT <name>` at the top level of a read statement: the name, and the byte
    /// range of the whole clause.
    pub format: Option<(String, Range<usize>)>,
    /// Every `SETTINGS name = value, ...` assignment of a read statement, at any depth
    /// (values as written, quotes removed from strings).
    pub settings: Vec<(String, String)>,
    /// The tables of the `system` database it names (`system.processes`, quoted or not),
    /// lower case.
    pub system_tables: Vec<String>,
}

/// System tables that show other users' queries, who may do what, or the servers
/// behind ClickHouse: never for a tenant, whatever the server's grants say (18.x has
/// none to say it with).
pub const SENSITIVE_SYSTEM_TABLES: &[&str] = &[
    "processes",
    "query_log",
    "query_thread_log",
    "query_views_log",
    "query_metric_log",
    "processors_profile_log",
    "opentelemetry_span_log",
    "session_log",
    "text_log",
    "trace_log",
    "crash_log",
    "part_log",
    "asynchronous_insert_log",
    "backup_log",
    "mutations",
    "distributed_ddl_queue",
    "replication_queue",
    "users",
    "roles",
    "role_grants",
    "grants",
    "quotas",
    "quota_usage",
    "quotas_usage",
    "quota_limits",
    "settings_profiles",
    "settings_profile_elements",
    "row_policies",
    "user_directories",
    "user_processes",
    "zookeeper",
    "zookeeper_connection",
    "clusters",
    "macros",
];

impl<'a> Statement<'a> {
    /// The first [`SENSITIVE_SYSTEM_TABLES`] entry it reads, if any.
    pub fn sensitive_table(&self) -> Option<&str> {
        self.system_tables
            .iter()
            .find(|t| SENSITIVE_SYSTEM_TABLES.contains(&t.as_str()))
            .map(String::as_str)
    }

    /// The statement to send: the text without trailing `;`, whitespace and comments.
    /// Offsets in ClickHouse's messages are the same as in the submitted text.
    pub fn body(&self) -> &'a str {
        &self.text[..self.end]
    }

    /// Whether it answers with rows (and so can have columns).
    pub fn produces_rows(&self) -> bool {
        self.kind == Kind::Read
    }

    /// Whether `DESCRIBE TABLE (<query>)` can tell its columns: a SELECT (possibly with
    /// a WITH clause or in parentheses).
    pub fn describable(&self) -> bool {
        matches!(self.keyword.as_str(), "SELECT" | "WITH")
    }

    /// The query without its `FORMAT` clause, for a DESCRIBE around it.
    pub fn query_without_format(&self) -> String {
        match &self.format {
            None => self.body().to_string(),
            Some((_, range)) => {
                let body = self.body();
                let end = range.end.min(body.len());
                format!("{}{}", &body[..range.start], &body[end..])
            }
        }
    }
}

/// Reads `sql` as one statement (see the module comment).
pub fn analyze(sql: &str) -> Result<Statement<'_>, SqlError> {
    let tokens = lex(sql)?;
    // Trailing `;` are dropped; any other token after a top-level `;` is a second
    // statement.
    let mut end_token = tokens.len();
    while end_token > 0 && tokens[end_token - 1].is_punct(b';') {
        end_token -= 1;
    }
    let tokens = &tokens[..end_token];
    if tokens.iter().any(|t| t.is_punct(b';') && t.depth == 0) {
        return Err(SqlError::MultiStatement);
    }
    let Some(last) = tokens.last() else {
        return Err(SqlError::Empty);
    };
    let end = last.span.end;
    let word = |t: &Token| t.word(sql).map(|w| w.to_ascii_uppercase());

    let at = tokens
        .iter()
        .position(|t| !t.is_punct(b'('))
        .ok_or(SqlError::Empty)?;
    let unknown = || SqlError::UnknownStatement(tokens[at].text(sql).into());
    let keyword = word(&tokens[at]).ok_or_else(unknown)?;
    let next = |i: usize| tokens.get(i).and_then(&word);
    let kind =
        classify(&keyword, next(at + 1).as_deref(), next(at + 2).as_deref()).ok_or_else(unknown)?;

    // INTO OUTFILE, at the top level of a query (`INSERT INTO outfile` names a table).
    if kind == Kind::Read
        && tokens.windows(2).any(|w| {
            w[0].depth == 0
                && word(&w[0]).as_deref() == Some("INTO")
                && word(&w[1]).as_deref() == Some("OUTFILE")
        })
    {
        return Err(SqlError::IntoOutfile);
    }

    let mut format = None;
    let mut settings = Vec::new();
    if kind == Kind::Read {
        for (i, t) in tokens.iter().enumerate() {
            if t.depth != 0 || word(t).as_deref() != Some("FORMAT") {
                continue;
            }
            if let Some(name) = tokens.get(i + 1).filter(|n| n.kind == TokenKind::Word) {
                format = Some((name.text(sql).to_string(), t.span.start..name.span.end));
            }
        }
        settings = settings_clauses(sql, tokens);
    }
    let system_tables = tokens
        .windows(3)
        .filter(|w| {
            w[0].name(sql)
                .is_some_and(|x| x.eq_ignore_ascii_case("system"))
                && w[1].is_punct(b'.')
        })
        .filter_map(|w| w[2].name(sql).map(|n| n.to_ascii_lowercase()))
        .collect();
    Ok(Statement {
        text: sql,
        end,
        kind,
        keyword,
        format,
        settings,
        system_tables,
    })
}

/// A `{name:Type}` placeholder of a statement (query parameters, task arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub name: String,
    /// The declared type as written.
    pub type_text: String,
    /// Where the whole placeholder is, braces included.
    pub span: Range<usize>,
}

/// The placeholders of `sql`, outside literals and comments, in order of appearance.
pub fn placeholders(sql: &str) -> Result<Vec<Placeholder>, SqlError> {
    let tokens = lex(sql)?;
    let mut found = Vec::new();
    for (i, open) in tokens.iter().enumerate() {
        if !open.is_punct(b'{') {
            continue;
        }
        let (Some(name), Some(colon)) = (tokens.get(i + 1), tokens.get(i + 2)) else {
            continue;
        };
        if name.kind != TokenKind::Word || !colon.is_punct(b':') {
            continue;
        }
        let close = tokens[i + 3..]
            .iter()
            .find(|t| t.is_punct(b'}') && t.depth == open.depth);
        if let Some(close) = close {
            found.push(Placeholder {
                name: name.text(sql).to_string(),
                type_text: sql[colon.span.end..close.span.start].trim().to_string(),
                span: open.span.start..close.span.end,
            });
        }
    }
    Ok(found)
}

/// `sql` with each placeholder replaced by `literal(placeholder)`.
pub fn render(
    sql: &str,
    placeholders: &[Placeholder],
    literal: impl Fn(&Placeholder) -> String,
) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut at = 0;
    for p in placeholders {
        out.push_str(&sql[at..p.span.start]);
        out.push_str(&literal(p));
        at = p.span.end;
    }
    out.push_str(&sql[at..]);
    out
}

/// The kind of a statement from its first words.
fn classify(first: &str, second: Option<&str>, third: Option<&str>) -> Option<Kind> {
    Some(match first {
        "SELECT" | "WITH" | "DESCRIBE" | "DESC" | "EXISTS" | "EXPLAIN" | "CHECK" => Kind::Read,
        "SHOW" => {
            // Who else runs what, and who may do what, is not data.
            let subject = match second {
                Some("CREATE") => third,
                other => other,
            };
            match subject {
                Some(
                    "PROCESSLIST" | "GRANTS" | "USERS" | "USER" | "ROLES" | "ROLE" | "QUOTAS"
                    | "QUOTA" | "PROFILES" | "PROFILE" | "SETTINGS" | "POLICIES" | "POLICY" | "ROW"
                    | "ACCESS" | "PRIVILEGES" | "CURRENT" | "ENABLED",
                ) => Kind::Admin,
                _ => Kind::Read,
            }
        }
        "INSERT" | "CREATE" | "ALTER" | "DROP" | "TRUNCATE" | "RENAME" | "OPTIMIZE" | "DELETE"
        | "UPDATE" | "EXCHANGE" | "UNDROP" | "REPLACE" | "MOVE" => Kind::Write,
        "KILL" | "SYSTEM" | "SET" | "USE" | "GRANT" | "REVOKE" | "ATTACH" | "DETACH" | "BACKUP"
        | "RESTORE" | "WATCH" | "BEGIN" | "COMMIT" | "ROLLBACK" => Kind::Admin,
        _ => return None,
    })
}

/// Every `SETTINGS a = 1, b = 'x'` assignment, at any depth. `SETTINGS` after a `.` is a
/// name (`system.settings`), and one not followed by `name =` is not a clause.
fn settings_clauses(sql: &str, tokens: &[Token]) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let is_clause = t
            .word(sql)
            .is_some_and(|w| w.eq_ignore_ascii_case("SETTINGS"))
            && !(i > 0 && tokens[i - 1].is_punct(b'.'));
        if !is_clause {
            continue;
        }
        let mut j = i + 1;
        while let (Some(name), Some(eq)) = (tokens.get(j), tokens.get(j + 1)) {
            if name.kind != TokenKind::Word || !eq.is_punct(b'=') {
                break;
            }
            // A value: a literal, a word (true, 'x', 1e9), or a signed number.
            let mut k = j + 2;
            let mut value = String::new();
            if tokens
                .get(k)
                .is_some_and(|t| t.is_punct(b'-') || t.is_punct(b'+'))
            {
                value.push_str(tokens[k].text(sql));
                k += 1;
            }
            let Some(v) = tokens.get(k) else {
                break;
            };
            value.push_str(&v.literal(sql));
            found.push((name.text(sql).to_string(), value));
            if tokens.get(k + 1).is_some_and(|t| t.is_punct(b',')) {
                j = k + 2;
            } else {
                break;
            }
        }
    }
    found
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    Word,
    Number,
    /// `'...'`
    String,
    /// `"..."` or `` `...` ``
    QuotedIdentifier,
    /// `$tag$...$tag$`
    Heredoc,
    Punct,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    kind: TokenKind,
    span: Range<usize>,
    /// Open parentheses (and brackets, braces) around it.
    depth: usize,
    /// The character of a punctuation token.
    punct: u8,
}

impl Token {
    fn text<'s>(&self, sql: &'s str) -> &'s str {
        &sql[self.span.clone()]
    }

    fn word<'s>(&self, sql: &'s str) -> Option<&'s str> {
        (self.kind == TokenKind::Word).then(|| self.text(sql))
    }

    /// An identifier, bare or quoted (quotes removed; escapes are not resolved).
    fn name<'s>(&self, sql: &'s str) -> Option<&'s str> {
        let text = self.text(sql);
        match self.kind {
            TokenKind::Word => Some(text),
            TokenKind::QuotedIdentifier => Some(&text[1..text.len() - 1]),
            _ => None,
        }
    }

    fn is_punct(&self, c: u8) -> bool {
        self.kind == TokenKind::Punct && self.punct == c
    }

    /// The value a literal token stands for: strings unquoted and unescaped.
    fn literal(&self, sql: &str) -> String {
        let text = self.text(sql);
        match self.kind {
            TokenKind::String => unescape(&text[1..text.len() - 1]),
            _ => text.to_string(),
        }
    }
}

/// `'...'`'s contents with `\x` and `''` resolved.
fn unescape(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('0') => out.push('\0'),
                Some(other) => out.push(other),
                None => {}
            },
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            c => out.push(c),
        }
    }
    out
}

/// The tokens of `sql`, comments and whitespace left out.
fn lex(sql: &str) -> Result<Vec<Token>, SqlError> {
    let b = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            c if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = line_end(b, i);
                continue;
            }
            // `# ` and `#!` start a comment on ClickHouse 20.x and later.
            b'#' if matches!(b.get(i + 1), Some(b' ' | b'!')) => {
                i = line_end(b, i);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Comments nest in ClickHouse.
                let mut nesting = 1;
                i += 2;
                while nesting > 0 {
                    if i + 1 >= b.len() {
                        return Err(SqlError::Unterminated("comment"));
                    }
                    if b[i] == b'/' && b[i + 1] == b'*' {
                        nesting += 1;
                        i += 2;
                    } else if b[i] == b'*' && b[i + 1] == b'/' {
                        nesting -= 1;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' | b'"' | b'`' => {
                i = quoted_end(b, i).ok_or(SqlError::Unterminated(match c {
                    b'\'' => "string literal",
                    _ => "quoted identifier",
                }))?;
                let kind = if c == b'\'' {
                    TokenKind::String
                } else {
                    TokenKind::QuotedIdentifier
                };
                tokens.push(Token::new(kind, start..i, depth, 0));
                continue;
            }
            b'$' => {
                if let Some(tag_end) = heredoc_tag(b, i) {
                    let tag = &b[i..tag_end];
                    let body = &b[tag_end..];
                    let close = body
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .ok_or(SqlError::Unterminated("heredoc"))?;
                    i = tag_end + close + tag.len();
                    tokens.push(Token::new(TokenKind::Heredoc, start..i, depth, 0));
                    continue;
                }
                i += 1;
                tokens.push(Token::new(TokenKind::Punct, start..i, depth, c));
                continue;
            }
            c if c.is_ascii_digit() => {
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric()
                        || b[i] == b'.'
                        || b[i] == b'_'
                        || ((b[i] == b'+' || b[i] == b'-')
                            && matches!(b[i - 1], b'e' | b'E')
                            && !sql[start..i].starts_with("0x")))
                {
                    i += 1;
                }
                tokens.push(Token::new(TokenKind::Number, start..i, depth, 0));
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80)
                {
                    i += 1;
                }
                tokens.push(Token::new(TokenKind::Word, start..i, depth, 0));
                continue;
            }
            b'(' | b'[' | b'{' => {
                tokens.push(Token::new(TokenKind::Punct, start..i + 1, depth, c));
                depth += 1;
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                tokens.push(Token::new(TokenKind::Punct, start..i + 1, depth, c));
            }
            _ => tokens.push(Token::new(TokenKind::Punct, start..i + 1, depth, c)),
        }
        i += 1;
    }
    Ok(tokens)
}

impl Token {
    fn new(kind: TokenKind, span: Range<usize>, depth: usize, punct: u8) -> Token {
        Token {
            kind,
            span,
            depth,
            punct,
        }
    }
}

fn line_end(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| from + p + 1)
}

/// The end (exclusive) of the quoted token starting at `start`, or `None` if it never
/// closes. Backslash escapes, and a doubled quote is a quote.
fn quoted_end(b: &[u8], start: usize) -> Option<usize> {
    let q = b[start];
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == q => {
                if b.get(i + 1) == Some(&q) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// `$$` or `$tag$` at `start`: the end of the opening tag.
fn heredoc_tag(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
        i += 1;
    }
    (b.get(i) == Some(&b'$')).then_some(i + 1)
}

/// `sql` with each `{name:Type}` replaced by its value in `parameters` as a typed
/// literal (see `types::literal_from_param`), for servers without query parameters; or
/// why it cannot be.
pub fn inline_parameters(
    sql: &str,
    parameters: &std::collections::BTreeMap<String, String>,
) -> Result<String, String> {
    let placeholders = placeholders(sql).map_err(|e| format!("the SQL cannot be read: {e}"))?;
    let mut literals = std::collections::HashMap::new();
    for p in &placeholders {
        let Some(value) = parameters.get(&p.name) else {
            return Err(format!("parameter `{}` has no value", p.name));
        };
        let literal = types::literal_from_param(&p.type_text, value)
            .map_err(|e| format!("parameter `{}` cannot be inlined: {e}", p.name))?;
        literals.insert(p.name.clone(), literal);
    }
    Ok(render(sql, &placeholders, |p| {
        literals.get(&p.name).cloned().unwrap_or_default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(sql: &str) -> Result<Kind, SqlError> {
        analyze(sql).map(|s| s.kind)
    }

    #[test]
    fn kinds_by_leading_keyword_after_comments_and_parentheses() {
        assert_eq!(kind("SELECT 1"), Ok(Kind::Read));
        assert_eq!(kind("  -- why\n /* how */ ((select 1))"), Ok(Kind::Read));
        assert_eq!(kind("with x as (select 1) select * from x"), Ok(Kind::Read));
        assert_eq!(kind("SHOW TABLES FROM system"), Ok(Kind::Read));
        assert_eq!(kind("DESC system.numbers"), Ok(Kind::Read));
        assert_eq!(kind("EXISTS TABLE system.numbers"), Ok(Kind::Read));
        assert_eq!(kind("EXPLAIN SELECT 1"), Ok(Kind::Read));
        assert_eq!(kind("show processlist"), Ok(Kind::Admin));
        assert_eq!(kind("SHOW GRANTS"), Ok(Kind::Admin));
        assert_eq!(kind("SHOW CREATE USER default"), Ok(Kind::Admin));
        assert_eq!(kind("SHOW CREATE TABLE t"), Ok(Kind::Read));
        assert_eq!(kind("INSERT INTO t VALUES (1)"), Ok(Kind::Write));
        assert_eq!(
            kind("create table t (x UInt8) engine = Memory"),
            Ok(Kind::Write)
        );
        assert_eq!(kind("KILL QUERY WHERE query_id = 'x'"), Ok(Kind::Admin));
        assert_eq!(kind("SET max_threads = 1"), Ok(Kind::Admin));
        assert_eq!(kind("SYSTEM FLUSH LOGS"), Ok(Kind::Admin));
        assert_eq!(
            kind("FROBNICATE 1"),
            Err(SqlError::UnknownStatement("FROBNICATE".into()))
        );
        assert_eq!(
            kind("'SELECT'"),
            Err(SqlError::UnknownStatement("'SELECT'".into()))
        );
    }

    #[test]
    fn trailing_semicolons_and_comments_are_not_statements() {
        let s = analyze("SELECT 3 ;; ;").unwrap();
        assert_eq!(s.body(), "SELECT 3");
        let s = analyze("SELECT 3 AS three -- trailing comment").unwrap();
        assert_eq!(s.body(), "SELECT 3 AS three");
        let s = analyze("SELECT 1 AS x -- c\n").unwrap();
        assert_eq!(s.body(), "SELECT 1 AS x");
        assert_eq!(analyze(";").unwrap_err(), SqlError::Empty);
        assert_eq!(
            analyze(" -- nothing\n ; /* */").unwrap_err(),
            SqlError::Empty
        );
        assert_eq!(
            analyze("SELECT 1; SELECT 2").unwrap_err(),
            SqlError::MultiStatement
        );
        assert_eq!(analyze("SELECT 1; -- fine\n").unwrap().body(), "SELECT 1");
    }

    #[test]
    fn structure_inside_literals_comments_and_parentheses_is_ignored() {
        let s = analyze("SELECT ';' AS a, \"x;y\" AS `b;c`, $$;$$ /* ; */ -- ;\n").unwrap();
        assert_eq!(s.kind, Kind::Read);
        assert!(s.format.is_none());
        let s = analyze("SELECT 'it''s', 'a\\'b;' FORMAT CSV").unwrap();
        assert_eq!(s.format.as_ref().unwrap().0, "CSV");
        assert_eq!(
            analyze("SELECT * FROM (SELECT 1 FORMAT JSON)")
                .unwrap()
                .format,
            None,
            "a FORMAT inside parentheses is not the statement's"
        );
        assert_eq!(
            analyze("SELECT 'unclosed").unwrap_err(),
            SqlError::Unterminated("string literal")
        );
        assert_eq!(
            analyze("SELECT /* /* nested */ still open").unwrap_err(),
            SqlError::Unterminated("comment")
        );
    }

    #[test]
    fn format_clause_and_what_describe_gets() {
        let s = analyze("SELECT 1 AS x FORMAT CSV;").unwrap();
        assert_eq!(s.format.as_ref().unwrap().0, "CSV");
        assert_eq!(s.query_without_format().trim(), "SELECT 1 AS x");
        let s = analyze("SELECT 1 FORMAT JSON SETTINGS max_threads = 1").unwrap();
        assert_eq!(
            s.query_without_format(),
            "SELECT 1  SETTINGS max_threads = 1"
        );
        assert!(s.describable());
        assert!(!analyze("SHOW TABLES").unwrap().describable());
        assert!(analyze("SHOW TABLES").unwrap().produces_rows());
        assert!(!analyze("INSERT INTO t FORMAT CSV").unwrap().produces_rows());
        assert_eq!(
            analyze("INSERT INTO t FORMAT CSV").unwrap().format,
            None,
            "an INSERT's FORMAT is its input"
        );
    }

    #[test]
    fn settings_clauses_at_any_depth() {
        let s = analyze(
            "SELECT name FROM system.settings WHERE x IN (SELECT 1 SETTINGS max_threads = 2) \
             SETTINGS max_execution_time = 0, max_memory_usage = -1, output_format_x = 'a''b'",
        )
        .unwrap();
        assert_eq!(
            s.settings,
            vec![
                ("max_threads".to_string(), "2".to_string()),
                ("max_execution_time".into(), "0".into()),
                ("max_memory_usage".into(), "-1".into()),
                ("output_format_x".into(), "a'b".into()),
            ]
        );
        assert!(
            analyze("SELECT settings FROM t")
                .unwrap()
                .settings
                .is_empty()
        );
    }

    #[test]
    fn sensitive_system_tables_quoted_or_not() {
        let t = |sql: &str| analyze(sql).unwrap().sensitive_table().map(String::from);
        assert_eq!(
            t("SELECT * FROM system.processes"),
            Some("processes".into())
        );
        assert_eq!(
            t("select * from SYSTEM.\"Query_Log\""),
            Some("query_log".into())
        );
        assert_eq!(t("SELECT * FROM `system`.`grants`"), Some("grants".into()));
        assert_eq!(t("SELECT * FROM system.numbers LIMIT 1"), None);
        assert_eq!(t("SELECT 'system.processes'"), None);
    }

    #[test]
    fn placeholders_outside_literals_in_order() {
        let sql = "SELECT {a:UInt8}, '{b:String}' /* {c:Int8} */, {d: Array(Tuple(UInt8, String)) }, {a:UInt8}";
        let found = placeholders(sql).unwrap();
        let names: Vec<(&str, &str)> = found
            .iter()
            .map(|p| (p.name.as_str(), p.type_text.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("a", "UInt8"),
                ("d", "Array(Tuple(UInt8, String))"),
                ("a", "UInt8")
            ]
        );
        assert_eq!(&sql[found[0].span.clone()], "{a:UInt8}");
        let rendered = render(sql, &found, |p| format!("<{}>", p.name));
        assert_eq!(
            rendered,
            "SELECT <a>, '{b:String}' /* {c:Int8} */, <d>, <a>"
        );
    }

    #[test]
    fn into_outfile_is_refused() {
        assert_eq!(
            analyze("SELECT 1 INTO OUTFILE '/tmp/x'").unwrap_err(),
            SqlError::IntoOutfile
        );
        assert_eq!(kind("INSERT INTO outfile VALUES (1)"), Ok(Kind::Write));
    }
}
