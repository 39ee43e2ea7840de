//! The ClickHouse types a placeholder (`{name:Type}`) may declare, and what Sluice does
//! with a value of one: check it (so a bad argument is a 400 naming it, not a failed
//! execution), write it as a `param_<name>` value (ClickHouse 19.x and later parse it
//! against the type), or write it as a typed SQL literal for servers without query
//! parameters (18.x): every string is quoted and escaped, every other value is checked
//! to be what its type says before it is written, and the literal is wrapped in a CAST
//! to the declared type, so both paths give the statement the same types.
//!
//! Supported: the integers (UInt8..UInt256, Int8..Int256), Float32/64, Decimal(P, S)
//! and Decimal32/64/128/256(S), Bool, String, FixedString(N), Date, Date32, DateTime
//! (with a time zone), DateTime64(P[, zone]), UUID, IPv4, IPv6, Enum8/16, and
//! Array, Nullable and LowCardinality of those. Tuple, Map and Nested are refused as
//! argument types (a task using them fails to load, naming the line).

use std::fmt;

use serde_json::Value;

/// A parsed ClickHouse type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Int { bits: u16, signed: bool },
    Float,
    Decimal,
    Bool,
    String,
    FixedString(usize),
    Date,
    DateTime,
    DateTime64,
    Uuid,
    Ipv4,
    Ipv6,
    Enum(Vec<String>),
    Array(Box<Type>),
    Nullable(Box<Type>),
    LowCardinality(Box<Type>),
}

/// The declared text of a type, e.g. `Array(Nullable(String))`, and its parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub text: String,
    pub parsed: Type,
}

impl Declared {
    pub fn parse(text: &str) -> Result<Declared, String> {
        let mut p = Parser {
            s: text.trim(),
            pos: 0,
        };
        let parsed = p.ty()?;
        p.ws();
        if p.pos != p.s.len() {
            return Err(format!("unexpected `{}` in type `{text}`", &p.s[p.pos..]));
        }
        Ok(Declared {
            text: text.trim().to_string(),
            parsed,
        })
    }
}

impl fmt::Display for Declared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.s[self.pos..].starts_with(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.ws();
        if self.s[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{c}` in type `{}`", self.s))
        }
    }

    fn word(&mut self) -> String {
        self.ws();
        let start = self.pos;
        while self.s[self.pos..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        self.s[start..self.pos].to_string()
    }

    fn number(&mut self) -> Result<usize, String> {
        let w = self.word();
        w.parse()
            .map_err(|_| format!("expected a number, not `{w}`, in type `{}`", self.s))
    }

    /// A single-quoted string literal (time zones, enum names).
    fn quoted(&mut self) -> Result<String, String> {
        self.ws();
        let rest = &self.s[self.pos..];
        if !rest.starts_with('\'') {
            return Err(format!("expected a quoted name in type `{}`", self.s));
        }
        let mut out = String::new();
        let mut chars = rest[1..].char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        out.push(e);
                    }
                }
                '\'' => {
                    self.pos += i + 2;
                    return Ok(out);
                }
                c => out.push(c),
            }
        }
        Err(format!("unclosed quote in type `{}`", self.s))
    }

    fn inner(&mut self) -> Result<Box<Type>, String> {
        self.expect('(')?;
        let t = self.ty()?;
        self.expect(')')?;
        Ok(Box::new(t))
    }

    fn ty(&mut self) -> Result<Type, String> {
        let name = self.word();
        let int = |bits, signed| Ok(Type::Int { bits, signed });
        match name.as_str() {
            "UInt8" => int(8, false),
            "UInt16" => int(16, false),
            "UInt32" => int(32, false),
            "UInt64" => int(64, false),
            "UInt128" => int(128, false),
            "UInt256" => int(256, false),
            "Int8" => int(8, true),
            "Int16" => int(16, true),
            "Int32" => int(32, true),
            "Int64" => int(64, true),
            "Int128" => int(128, true),
            "Int256" => int(256, true),
            "Float32" | "Float64" => Ok(Type::Float),
            "Bool" => Ok(Type::Bool),
            "String" => Ok(Type::String),
            "UUID" => Ok(Type::Uuid),
            "IPv4" => Ok(Type::Ipv4),
            "IPv6" => Ok(Type::Ipv6),
            "Date" | "Date32" => Ok(Type::Date),
            "FixedString" => {
                self.expect('(')?;
                let n = self.number()?;
                self.expect(')')?;
                Ok(Type::FixedString(n))
            }
            "Decimal" => {
                self.expect('(')?;
                self.number()?;
                if self.eat(',') {
                    self.number()?;
                }
                self.expect(')')?;
                Ok(Type::Decimal)
            }
            "Decimal32" | "Decimal64" | "Decimal128" | "Decimal256" => {
                self.expect('(')?;
                self.number()?;
                self.expect(')')?;
                Ok(Type::Decimal)
            }
            "DateTime" => {
                if self.eat('(') {
                    self.quoted()?;
                    self.expect(')')?;
                }
                Ok(Type::DateTime)
            }
            "DateTime64" => {
                self.expect('(')?;
                self.number()?;
                if self.eat(',') {
                    self.quoted()?;
                }
                self.expect(')')?;
                Ok(Type::DateTime64)
            }
            "Enum8" | "Enum16" | "Enum" => {
                self.expect('(')?;
                let mut names = Vec::new();
                loop {
                    names.push(self.quoted()?);
                    if self.eat('=') {
                        self.ws();
                        self.eat('-');
                        self.number()?;
                    }
                    if !self.eat(',') {
                        break;
                    }
                }
                self.expect(')')?;
                Ok(Type::Enum(names))
            }
            "Array" => Ok(Type::Array(self.inner()?)),
            "Nullable" => Ok(Type::Nullable(self.inner()?)),
            "LowCardinality" => Ok(Type::LowCardinality(self.inner()?)),
            "" => Err(format!("expected a type in `{}`", self.s)),
            other => Err(format!(
                "`{other}` is not a type Sluice accepts for an argument (see `sql::types`)"
            )),
        }
    }
}

/// A JSON value as a value of `ty`, or why it is not one (never quoting the value: it
/// may be a secret).
fn check(ty: &Type, v: &Value) -> Result<(), String> {
    match (ty, v) {
        (Type::Nullable(_), Value::Null) => Ok(()),
        (Type::Nullable(t) | Type::LowCardinality(t), v) => check(t, v),
        (Type::Array(t), Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| check(t, item).map_err(|e| format!("element {i}: {e}"))),
        (Type::Array(_), _) => Err("expected an array".into()),
        (_, Value::Null) => Err("null is not allowed (the type is not Nullable)".into()),
        // Text types take JSON strings only: a number sent for a String is more likely a
        // client's mistake than a wish, and `1` and `1.0` would not be the same text.
        (t, v) if t.is_textual() && !v.is_string() => Err("expected a JSON string".into()),
        (t, v) => {
            let text = scalar_text(v).ok_or("expected a string, a number or a boolean")?;
            check_scalar(t, &text)
        }
    }
}

impl Type {
    fn is_textual(&self) -> bool {
        matches!(
            self,
            Type::String
                | Type::FixedString(_)
                | Type::Date
                | Type::DateTime64
                | Type::Uuid
                | Type::Ipv4
                | Type::Ipv6
                | Type::Enum(_)
        )
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn check_scalar(ty: &Type, text: &str) -> Result<(), String> {
    let fits = match ty {
        Type::Int { bits, signed } => int_fits(text, *bits, *signed),
        Type::Float => {
            text.parse::<f64>().is_ok() || matches!(text, "nan" | "inf" | "-inf" | "+inf")
        }
        Type::Decimal => decimal_text(text),
        Type::Bool => matches!(text, "true" | "false" | "1" | "0"),
        Type::String => true,
        Type::FixedString(n) => text.len() <= *n,
        Type::Date => chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok(),
        Type::DateTime => {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").is_ok()
                || text.parse::<u32>().is_ok()
        }
        Type::DateTime64 => {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").is_ok()
        }
        Type::Uuid => uuid::Uuid::parse_str(text).is_ok() && text.len() == 36,
        Type::Ipv4 => text.parse::<std::net::Ipv4Addr>().is_ok(),
        Type::Ipv6 => text.parse::<std::net::Ipv6Addr>().is_ok(),
        Type::Enum(names) => names.iter().any(|n| n == text),
        Type::Array(_) | Type::Nullable(_) | Type::LowCardinality(_) => false,
    };
    if fits {
        Ok(())
    } else {
        Err(match ty {
            Type::Int { bits, signed } => format!(
                "expected an integer that fits {}Int{bits}",
                if *signed { "" } else { "U" }
            ),
            Type::Date => "expected a date, YYYY-MM-DD".into(),
            Type::DateTime => "expected a date-time, YYYY-MM-DD hh:mm:ss".into(),
            Type::DateTime64 => "expected a date-time, YYYY-MM-DD hh:mm:ss[.fff]".into(),
            Type::FixedString(n) => format!("expected at most {n} bytes"),
            Type::Enum(names) => format!("expected one of {}", names.join(", ")),
            other => format!("expected a value of type {other:?}"),
        })
    }
}

fn int_fits(text: &str, bits: u16, signed: bool) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    if text.starts_with('-') && !signed {
        return digits.bytes().all(|b| b == b'0');
    }
    if bits > 64 {
        // Checked by digit count; ClickHouse checks the exact range.
        let max_digits = if bits == 128 { 39 } else { 78 };
        return digits.trim_start_matches('0').len() <= max_digits;
    }
    match (signed, text.parse::<i128>()) {
        (_, Err(_)) => false,
        (true, Ok(n)) => n >= -(1i128 << (bits - 1)) && n < (1i128 << (bits - 1)),
        (false, Ok(n)) => n >= 0 && n < (1i128 << bits),
    }
}

fn decimal_text(text: &str) -> bool {
    let t = text.strip_prefix('-').unwrap_or(text);
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    !(whole.is_empty() && frac.is_empty())
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

impl Declared {
    /// Checks `v` against the type; the error says why, never what the value was.
    pub fn check(&self, v: &Value) -> Result<(), String> {
        check(&self.parsed, v)
    }

    /// `v` (already checked) as a `param_<name>` value: text for scalars (ClickHouse
    /// reads it against the type), ClickHouse's literal syntax for arrays, `\N` for null.
    pub fn param_text(&self, v: &Value) -> String {
        match (&self.parsed, v) {
            (_, Value::Null) => "\\N".to_string(),
            (Type::Array(t), Value::Array(items)) => {
                let parts: Vec<String> = items.iter().map(|i| element_literal(t, i)).collect();
                format!("[{}]", parts.join(","))
            }
            (_, v) => scalar_text(v).unwrap_or_default(),
        }
    }

    /// `v` (already checked) as a SQL literal of the declared type, for servers without
    /// query parameters: `CAST(<literal> AS <type>)`.
    pub fn literal(&self, v: &Value) -> String {
        format!(
            "CAST({} AS {})",
            element_literal(&self.parsed, v),
            self.text
        )
    }
}

/// A value as a ClickHouse literal: strings quoted and escaped, numbers as checked text,
/// arrays of those, NULL.
fn element_literal(ty: &Type, v: &Value) -> String {
    match (ty, v) {
        (_, Value::Null) => "NULL".into(),
        (Type::Nullable(t) | Type::LowCardinality(t), v) => element_literal(t, v),
        (Type::Array(t), Value::Array(items)) => {
            let parts: Vec<String> = items.iter().map(|i| element_literal(t, i)).collect();
            format!("[{}]", parts.join(", "))
        }
        (Type::Int { .. } | Type::Float | Type::Decimal, v) => {
            let text = scalar_text(v).unwrap_or_default();
            match text.as_str() {
                "nan" | "inf" | "-inf" | "+inf" => quote(&text),
                _ => text,
            }
        }
        (Type::Bool, v) => match scalar_text(v).as_deref() {
            Some("true" | "1") => "1".into(),
            _ => "0".into(),
        },
        (_, v) => quote(&scalar_text(v).unwrap_or_default()),
    }
}

/// A `param_<name>` value (as Sluice stores it) as a literal of its declared type, for a
/// server without query parameters: `CAST(<literal> AS <type>)`. Scalars are quoted and
/// escaped whatever they hold (ClickHouse casts the string); composite values, which a
/// client writes in ClickHouse's literal syntax, are inserted only when they are made of
/// literals, brackets and commas alone.
pub fn literal_from_param(type_text: &str, value: &str) -> Result<String, String> {
    let declared = Declared::parse(type_text)?;
    let nullable = matches!(declared.parsed, Type::Nullable(_));
    let inner = match &declared.parsed {
        Type::Nullable(t) | Type::LowCardinality(t) => t.as_ref(),
        t => t,
    };
    let literal = if value == "\\N" && nullable {
        "NULL".to_string()
    } else if matches!(inner, Type::Array(_)) {
        if !only_literals(value) {
            return Err(format!(
                "the value of a {type_text} parameter must be a ClickHouse literal \
                 (brackets, commas, quoted strings, numbers, NULL)"
            ));
        }
        value.to_string()
    } else {
        quote(value)
    };
    Ok(format!("CAST({literal} AS {})", declared.text))
}

/// Whether `text` is made of literals, brackets, parentheses and commas only.
fn only_literals(text: &str) -> bool {
    let Ok(tokens) = super::lex(text) else {
        return false;
    };
    tokens.iter().all(|t| match t.kind {
        super::TokenKind::String | super::TokenKind::Number => true,
        super::TokenKind::Punct => matches!(t.punct, b'[' | b']' | b'(' | b')' | b',' | b'-'),
        super::TokenKind::Word => matches!(
            t.text(text).to_ascii_lowercase().as_str(),
            "null" | "true" | "false" | "nan" | "inf"
        ),
        _ => false,
    })
}

/// `'...'` with every character ClickHouse's lexer treats specially escaped.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(text: &str) -> Declared {
        Declared::parse(text).unwrap()
    }

    #[test]
    fn types_parse_or_say_why_not() {
        assert_eq!(
            t("UInt32").parsed,
            Type::Int {
                bits: 32,
                signed: false
            }
        );
        assert_eq!(
            t(" Array( Nullable(String) ) ").parsed,
            Type::Array(Box::new(Type::Nullable(Box::new(Type::String))))
        );
        assert!(Declared::parse("DateTime64(3, 'Asia/Kolkata')").is_ok());
        assert!(Declared::parse("Enum8('a' = 1, 'b' = -2)").is_ok());
        assert!(Declared::parse("Decimal(10, 2)").is_ok());
        assert!(Declared::parse("Map(String, UInt8)").is_err());
        assert!(Declared::parse("Strin").is_err());
        assert!(Declared::parse("Array(String").is_err());
    }

    #[test]
    fn values_are_checked_against_their_type() {
        assert!(t("UInt8").check(&json!(255)).is_ok());
        assert!(t("UInt8").check(&json!(256)).is_err());
        assert!(t("UInt8").check(&json!(-1)).is_err());
        assert!(t("Int8").check(&json!("-128")).is_ok());
        assert!(t("UInt64").check(&json!("18446744073709551615")).is_ok());
        assert!(t("UInt64").check(&json!("18446744073709551616")).is_err());
        assert!(t("Date").check(&json!("2026-02-29")).is_err());
        assert!(t("Date").check(&json!("2024-02-29")).is_ok());
        assert!(t("DateTime").check(&json!("2026-11-23 12:00:00")).is_ok());
        assert!(t("UUID").check(&json!("not-a-uuid")).is_err());
        assert!(t("Array(UInt8)").check(&json!([1, 2])).is_ok());
        assert!(t("Array(UInt8)").check(&json!([1, "x"])).is_err());
        assert!(t("String").check(&Value::Null).is_err());
        assert!(t("Nullable(String)").check(&Value::Null).is_ok());
        assert!(t("Enum8('a' = 1)").check(&json!("b")).is_err());
        assert!(t("FixedString(2)").check(&json!("abc")).is_err());
    }

    #[test]
    fn parameter_values_become_literals_only_when_safe() {
        assert_eq!(
            literal_from_param("String", "x') OR 1 --").unwrap(),
            "CAST('x\\') OR 1 --' AS String)"
        );
        assert_eq!(
            literal_from_param("Array(String)", "['a', 'b\\'c']").unwrap(),
            "CAST(['a', 'b\\'c'] AS Array(String))"
        );
        assert!(literal_from_param("Array(UInt8)", "[1]) UNION ALL SELECT (1").is_err());
        assert!(literal_from_param("Array(UInt8)", "[sleep(3)]").is_err());
        assert_eq!(
            literal_from_param("Nullable(UInt8)", "\\N").unwrap(),
            "CAST(NULL AS Nullable(UInt8))"
        );
        assert!(literal_from_param("Map(String, UInt8)", "{}").is_err());
    }

    #[test]
    fn literals_quote_every_string() {
        let hostile = "'; DROP TABLE t; --\\ \n";
        assert_eq!(
            t("String").literal(&json!(hostile)),
            "CAST('\\'; DROP TABLE t; --\\\\ \\n' AS String)"
        );
        assert_eq!(
            t("Array(Nullable(String))").literal(&json!(["a'", null])),
            "CAST(['a\\'', NULL] AS Array(Nullable(String)))"
        );
        assert_eq!(t("UInt8").literal(&json!(7)), "CAST(7 AS UInt8)");
        assert_eq!(t("Array(String)").param_text(&json!(["a'b"])), "['a\\'b']");
        assert_eq!(t("Nullable(UInt8)").param_text(&Value::Null), "\\N");
    }
}
