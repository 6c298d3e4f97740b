//! Content-based subscription filters: parsed and checked once at subscribe time, evaluated by
//! the broker core for each message (only for subscriptions that have one).
//!
//! ```text
//! filter  := or
//! or      := and ("or" and)*
//! and     := unary ("and" unary)*
//! unary   := "not" unary | "(" filter ")" | test
//! test    := subject op value | subject "exists" | subject "in" "(" value ("," value)* ")"
//!          | subject "prefix" string
//! subject := header.<name> | $.path.to[0].field | tlv.type | tlv.<record>.<field>
//! op      := "==" | "=" | "!=" | "<" | "<=" | ">" | ">="
//! value   := "string" | 'string' | number | true | false | null
//! ```
//!
//! Headers compare as text (numbers parse the text); `$` paths read JSON payloads (a payload that
//! is not JSON matches no `$` test); `tlv.type` is true when any record has that type; `tlv.<record>.<field>`
//! reads a field of the message's first record of that type (`trade`, `quote`, `signal`,
//! `arbitrage`, `order`, `cancel`, `fill`); prices and quantities compare as decimals.

use std::fmt;

use mycelium_codec::Fixed8;
use mycelium_codec::records::{
    ArbitrageSignal, Fill, OrderCancel, OrderNew, Quote, Record, SignalIdentity, Trade,
};
use mycelium_protocol::HeaderIter;

/// A parse error, with the byte position it was found at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter: {message} at position {position}")]
pub struct FilterError {
    /// Byte offset in the filter text.
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    text: String,
    root: Node,
    needs_json: bool,
    needs_tlv: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Test(Subject, Test),
}

#[derive(Debug, Clone, PartialEq)]
enum Subject {
    Header(String),
    Json(Vec<Step>),
    TlvType,
    TlvField(u8, &'static str),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Number(f64),
    Bool(bool),
    Null,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Compare(Op, Value),
    Exists,
    In(Vec<Value>),
    Prefix(String),
}

/// The known TLV records and their fields (name, TLV type, field names).
const RECORDS: &[(&str, u8, &[&str])] = &[
    (
        "trade",
        1,
        &["instrument_id", "price", "volume", "timestamp_ns", "side"],
    ),
    (
        "quote",
        2,
        &[
            "instrument_id",
            "bid_price",
            "bid_size",
            "ask_price",
            "ask_size",
            "timestamp_ns",
        ],
    ),
    (
        "signal",
        20,
        &["strategy_id", "signal_id", "confidence", "timestamp_ns"],
    ),
    (
        "arbitrage",
        21,
        &[
            "source_venue",
            "target_venue",
            "instrument_id",
            "buy_price",
            "sell_price",
            "max_volume",
            "expected_profit",
            "valid_until_ns",
        ],
    ),
    (
        "order",
        40,
        &[
            "order_id",
            "instrument_id",
            "price",
            "quantity",
            "side",
            "order_type",
            "time_in_force",
            "strategy_id",
            "timestamp_ns",
        ],
    ),
    (
        "cancel",
        41,
        &["order_id", "instrument_id", "reason", "timestamp_ns"],
    ),
    (
        "fill",
        44,
        &[
            "order_id",
            "fill_id",
            "instrument_id",
            "price",
            "quantity",
            "fee",
            "side",
            "liquidity",
            "timestamp_ns",
        ],
    ),
];

impl Filter {
    /// Parses `text`.
    ///
    /// # Errors
    /// [`FilterError`] naming the position.
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut parser = Parser {
            text,
            tokens: tokenize(text)?,
            at: 0,
            depth: 0,
            tests: 0,
        };
        let root = parser.or()?;
        if let Some(token) = parser.tokens.get(parser.at) {
            return Err(FilterError {
                position: token.position,
                message: format!("unexpected `{}`", token.text(text)),
            });
        }
        let (mut needs_json, mut needs_tlv) = (false, false);
        root.walk(&mut |subject| match subject {
            Subject::Json(_) => needs_json = true,
            Subject::TlvType | Subject::TlvField(..) => needs_tlv = true,
            Subject::Header(_) => {}
        });
        Ok(Filter {
            text: text.to_owned(),
            root,
            needs_json,
            needs_tlv,
        })
    }

    /// The filter as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether a message with this header block and payload matches.
    pub fn matches(&self, headers: &[u8], payload: &[u8]) -> bool {
        let json = if self.needs_json {
            serde_json::from_slice::<serde_json::Value>(payload).ok()
        } else {
            None
        };
        let tlv = if self.needs_tlv {
            mycelium_codec::validate(payload).ok()
        } else {
            None
        };
        let message = MessageView {
            headers,
            json: json.as_ref(),
            tlv: tlv.as_ref(),
        };
        self.root.eval(&message)
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

struct MessageView<'a> {
    headers: &'a [u8],
    json: Option<&'a serde_json::Value>,
    tlv: Option<&'a mycelium_codec::Message<'a>>,
}

impl Node {
    fn walk(&self, visit: &mut impl FnMut(&Subject)) {
        match self {
            Node::And(a, b) | Node::Or(a, b) => {
                a.walk(visit);
                b.walk(visit);
            }
            Node::Not(a) => a.walk(visit),
            Node::Test(subject, _) => visit(subject),
        }
    }

    fn eval(&self, m: &MessageView<'_>) -> bool {
        match self {
            Node::And(a, b) => a.eval(m) && b.eval(m),
            Node::Or(a, b) => a.eval(m) || b.eval(m),
            Node::Not(a) => !a.eval(m),
            Node::Test(subject, test) => {
                if *subject == Subject::TlvType {
                    let Some(message) = m.tlv else { return false };
                    return message
                        .tlvs()
                        .map_while(Result::ok)
                        .any(|tlv| test.check(&Value::Number(f64::from(tlv.tlv_type))));
                }
                match subject.value(m) {
                    Some(value) => test.check(&value),
                    None => false,
                }
            }
        }
    }
}

impl Subject {
    fn value(&self, m: &MessageView<'_>) -> Option<Value> {
        match self {
            Subject::Header(name) => HeaderIter::new(m.headers)
                .map_while(Result::ok)
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| Value::Text(String::from_utf8_lossy(v).into_owned())),
            Subject::Json(path) => {
                let mut at = m.json?;
                for step in path {
                    at = match step {
                        Step::Key(key) => at.get(key)?,
                        Step::Index(i) => at.get(*i)?,
                    };
                }
                Some(match at {
                    serde_json::Value::String(s) => Value::Text(s.clone()),
                    serde_json::Value::Number(n) => Value::Number(n.as_f64()?),
                    serde_json::Value::Bool(b) => Value::Bool(*b),
                    serde_json::Value::Null => Value::Null,
                    other => Value::Text(other.to_string()),
                })
            }
            Subject::TlvType => None,
            Subject::TlvField(tlv_type, field) => {
                let message = m.tlv?;
                let tlv = message
                    .tlvs()
                    .map_while(Result::ok)
                    .find(|t| t.tlv_type == *tlv_type)?;
                record_field(*tlv_type, tlv.value, field)
            }
        }
    }
}

fn fixed(v: zerocopy::little_endian::I64) -> Value {
    Value::Number(Fixed8(v.get()).to_string().parse().unwrap_or(f64::NAN))
}

fn int(v: u64) -> Value {
    Value::Number(v as f64)
}

fn record_field(tlv_type: u8, value: &[u8], field: &str) -> Option<Value> {
    Some(match tlv_type {
        1 => {
            let r = Trade::from_value(value).ok()?;
            match field {
                "instrument_id" => int(r.instrument_id.get()),
                "price" => fixed(r.price),
                "volume" => fixed(r.volume),
                "timestamp_ns" => int(r.timestamp_ns.get()),
                _ => int(r.side.into()),
            }
        }
        2 => {
            let r = Quote::from_value(value).ok()?;
            match field {
                "instrument_id" => int(r.instrument_id.get()),
                "bid_price" => fixed(r.bid_price),
                "bid_size" => fixed(r.bid_size),
                "ask_price" => fixed(r.ask_price),
                "ask_size" => fixed(r.ask_size),
                _ => int(r.timestamp_ns.get()),
            }
        }
        20 => {
            let r = SignalIdentity::from_value(value).ok()?;
            match field {
                "strategy_id" => int(r.strategy_id.get().into()),
                "signal_id" => int(r.signal_id.get()),
                "confidence" => int(r.confidence.into()),
                _ => int(r.timestamp_ns.get()),
            }
        }
        21 => {
            let r = ArbitrageSignal::from_value(value).ok()?;
            match field {
                "source_venue" => int(r.source_venue.get().into()),
                "target_venue" => int(r.target_venue.get().into()),
                "instrument_id" => int(r.instrument_id.get()),
                "buy_price" => fixed(r.buy_price),
                "sell_price" => fixed(r.sell_price),
                "max_volume" => fixed(r.max_volume),
                "expected_profit" => fixed(r.expected_profit),
                _ => int(r.valid_until_ns.get()),
            }
        }
        40 => {
            let r = OrderNew::from_value(value).ok()?;
            match field {
                "order_id" => int(r.order_id.get()),
                "instrument_id" => int(r.instrument_id.get()),
                "price" => fixed(r.price),
                "quantity" => fixed(r.quantity),
                "side" => int(r.side.into()),
                "order_type" => int(r.order_type.into()),
                "time_in_force" => int(r.time_in_force.into()),
                "strategy_id" => int(r.strategy_id.get().into()),
                _ => int(r.timestamp_ns.get()),
            }
        }
        41 => {
            let r = OrderCancel::from_value(value).ok()?;
            match field {
                "order_id" => int(r.order_id.get()),
                "instrument_id" => int(r.instrument_id.get()),
                "reason" => int(r.reason.into()),
                _ => int(r.timestamp_ns.get()),
            }
        }
        44 => {
            let r = Fill::from_value(value).ok()?;
            match field {
                "order_id" => int(r.order_id.get()),
                "fill_id" => int(r.fill_id.get()),
                "instrument_id" => int(r.instrument_id.get()),
                "price" => fixed(r.price),
                "quantity" => fixed(r.quantity),
                "fee" => fixed(r.fee),
                "side" => int(r.side.into()),
                "liquidity" => int(r.liquidity.into()),
                _ => int(r.timestamp_ns.get()),
            }
        }
        _ => return None,
    })
}

impl Test {
    fn check(&self, value: &Value) -> bool {
        match self {
            Test::Exists => true,
            Test::Prefix(prefix) => matches!(value, Value::Text(t) if t.starts_with(prefix.as_str())),
            Test::In(values) => values
                .iter()
                .any(|v| compare(value, v) == Some(std::cmp::Ordering::Equal)),
            Test::Compare(op, expected) => {
                let ordering = compare(value, expected);
                match op {
                    Op::Eq => ordering == Some(std::cmp::Ordering::Equal),
                    Op::Ne => ordering != Some(std::cmp::Ordering::Equal),
                    Op::Lt => ordering == Some(std::cmp::Ordering::Less),
                    Op::Le => matches!(
                        ordering,
                        Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                    ),
                    Op::Gt => ordering == Some(std::cmp::Ordering::Greater),
                    Op::Ge => matches!(
                        ordering,
                        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
                    ),
                }
            }
        }
    }
}

/// Orders `actual` against `expected`: numbers numerically (text that parses as a number too,
/// since header values are text), text as text, booleans and null by equality.
fn compare(actual: &Value, expected: &Value) -> Option<std::cmp::Ordering> {
    match (actual, expected) {
        (Value::Number(a), Value::Number(b)) => a.partial_cmp(b),
        (Value::Text(a), Value::Number(b)) => a.trim().parse::<f64>().ok()?.partial_cmp(b),
        (Value::Text(a), Value::Text(b)) => Some(a.cmp(b)),
        (Value::Bool(a), Value::Bool(b)) => (a == b).then_some(std::cmp::Ordering::Equal),
        (Value::Null, Value::Null) => Some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Word(String),
    Str(String),
    Num(f64),
    Op(&'static str),
    Open,
    Close,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    position: usize,
    end: usize,
}

impl Token {
    fn text<'a>(&self, source: &'a str) -> &'a str {
        &source[self.position..self.end]
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, FilterError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    if text.len() > 4096 {
        return Err(FilterError {
            position: 4096,
            message: "longer than 4,096 bytes".into(),
        });
    }
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let kind = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => {
                i += 1;
                Kind::Open
            }
            b')' => {
                i += 1;
                Kind::Close
            }
            b',' => {
                i += 1;
                Kind::Comma
            }
            b'"' | b'\'' => {
                let quote = c;
                i += 1;
                let mut value = String::new();
                loop {
                    let Some(&b) = bytes.get(i) else {
                        return Err(FilterError {
                            position: start,
                            message: "unterminated string".into(),
                        });
                    };
                    if b == quote {
                        i += 1;
                        break;
                    }
                    if b == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    let ch = text[i..].chars().next().unwrap_or('\0');
                    value.push(ch);
                    i += ch.len_utf8();
                }
                Kind::Str(value)
            }
            b'=' | b'!' | b'<' | b'>' => {
                let two = text.get(i..i + 2).unwrap_or("");
                let op = match two {
                    "==" => "==",
                    "!=" => "!=",
                    "<=" => "<=",
                    ">=" => ">=",
                    _ => match c {
                        b'=' => "=",
                        b'<' => "<",
                        b'>' => ">",
                        _ => {
                            return Err(FilterError {
                                position: start,
                                message: "`!` must be followed by `=` (use `not` to negate)".into(),
                            });
                        }
                    },
                };
                i += op.len();
                Kind::Op(op)
            }
            b'-' | b'0'..=b'9' => {
                i += 1;
                while i < bytes.len()
                    && (bytes[i].is_ascii_digit() || matches!(bytes[i], b'.' | b'e' | b'E' | b'+' | b'-'))
                {
                    i += 1;
                }
                let number = &text[start..i];
                Kind::Num(number.parse().map_err(|_| FilterError {
                    position: start,
                    message: format!("`{number}` is not a number"),
                })?)
            }
            _ if c.is_ascii_alphabetic() || c == b'$' || c == b'_' => {
                i += 1;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric()
                        || matches!(bytes[i], b'_' | b'.' | b'-' | b'[' | b']' | b'$'))
                {
                    i += 1;
                }
                Kind::Word(text[start..i].to_owned())
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(FilterError {
                    position: start,
                    message: format!("unexpected character `{ch}`"),
                });
            }
        };
        tokens.push(Token {
            kind,
            position: start,
            end: i,
        });
    }
    Ok(tokens)
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    at: usize,
    /// Parentheses and `not`s open around the current position.
    depth: usize,
    /// Tests parsed so far.
    tests: usize,
}

/// Parentheses and `not`s nested at most this deep: parsing, evaluating and dropping a filter
/// recurse once per level, and a filter of thousands of `(` overflowed the stack.
pub const FILTER_DEPTH_MAX: usize = 32;
/// Tests (`subject op value`) in one filter, at most; a chain of `and`s nests one level per test.
pub const FILTER_TESTS_MAX: usize = 128;
/// Values in one `in (...)` list, at most.
pub const FILTER_IN_VALUES_MAX: usize = 1024;

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn error(&self, message: impl Into<String>) -> FilterError {
        FilterError {
            position: self.peek().map_or(self.text.len(), |t| t.position),
            message: message.into(),
        }
    }

    fn keyword(&mut self, word: &str) -> bool {
        if matches!(self.peek(), Some(Token { kind: Kind::Word(w), .. }) if w.eq_ignore_ascii_case(word)) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Node, FilterError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, FilterError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Node::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    /// Enters one more level of nesting, refusing past [`FILTER_DEPTH_MAX`].
    fn nest(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > FILTER_DEPTH_MAX {
            return Err(self.error(format!(
                "nested deeper than {FILTER_DEPTH_MAX} levels of `(` and `not`"
            )));
        }
        Ok(())
    }

    fn unary(&mut self) -> Result<Node, FilterError> {
        if self.keyword("not") {
            self.nest()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        if matches!(self.peek(), Some(Token { kind: Kind::Open, .. })) {
            self.nest()?;
            self.at += 1;
            let inner = self.or()?;
            self.depth -= 1;
            if !matches!(
                self.peek(),
                Some(Token {
                    kind: Kind::Close,
                    ..
                })
            ) {
                return Err(self.error("expected `)`"));
            }
            self.at += 1;
            return Ok(inner);
        }
        self.test()
    }

    fn test(&mut self) -> Result<Node, FilterError> {
        self.tests += 1;
        if self.tests > FILTER_TESTS_MAX {
            return Err(self.error(format!("more than {FILTER_TESTS_MAX} tests in one filter")));
        }
        let Some(token) = self.peek().cloned() else {
            return Err(self.error("expected a test like `header.kind == \"x\"` or `$.price > 100`"));
        };
        let Kind::Word(word) = &token.kind else {
            return Err(self.error(format!("expected a subject, found `{}`", token.text(self.text))));
        };
        let subject = subject(word).map_err(|message| FilterError {
            position: token.position,
            message,
        })?;
        self.at += 1;
        let test = if self.keyword("exists") {
            Test::Exists
        } else if self.keyword("prefix") {
            match self.value()? {
                Value::Text(prefix) => Test::Prefix(prefix),
                _ => return Err(self.error_before("`prefix` takes a string")),
            }
        } else if self.keyword("in") {
            if !matches!(self.peek(), Some(Token { kind: Kind::Open, .. })) {
                return Err(self.error("`in` takes a list: in (\"a\", \"b\")"));
            }
            self.at += 1;
            let mut values = vec![self.value()?];
            while matches!(
                self.peek(),
                Some(Token {
                    kind: Kind::Comma,
                    ..
                })
            ) {
                self.at += 1;
                if values.len() == FILTER_IN_VALUES_MAX {
                    return Err(self.error(format!(
                        "more than {FILTER_IN_VALUES_MAX} values in one `in` list"
                    )));
                }
                values.push(self.value()?);
            }
            if !matches!(
                self.peek(),
                Some(Token {
                    kind: Kind::Close,
                    ..
                })
            ) {
                return Err(self.error("expected `,` or `)`"));
            }
            self.at += 1;
            Test::In(values)
        } else {
            let op = match self.peek() {
                Some(Token {
                    kind: Kind::Op(op), ..
                }) => match *op {
                    "==" | "=" => Op::Eq,
                    "!=" => Op::Ne,
                    "<" => Op::Lt,
                    "<=" => Op::Le,
                    ">" => Op::Gt,
                    _ => Op::Ge,
                },
                _ => return Err(self.error("expected an operator: == != < <= > >= in exists prefix")),
            };
            self.at += 1;
            Test::Compare(op, self.value()?)
        };
        Ok(Node::Test(subject, test))
    }

    fn error_before(&self, message: &str) -> FilterError {
        FilterError {
            position: self
                .tokens
                .get(self.at.saturating_sub(1))
                .map_or(0, |t| t.position),
            message: message.to_owned(),
        }
    }

    fn value(&mut self) -> Result<Value, FilterError> {
        let value = match self.peek().map(|t| &t.kind) {
            Some(Kind::Str(s)) => Value::Text(s.clone()),
            Some(Kind::Num(n)) => Value::Number(*n),
            Some(Kind::Word(w)) if w == "true" => Value::Bool(true),
            Some(Kind::Word(w)) if w == "false" => Value::Bool(false),
            Some(Kind::Word(w)) if w == "null" => Value::Null,
            _ => return Err(self.error("expected a value: \"text\", a number, true, false or null")),
        };
        self.at += 1;
        Ok(value)
    }
}

fn subject(word: &str) -> Result<Subject, String> {
    if let Some(name) = word.strip_prefix("header.") {
        if name.is_empty() || name.contains(['[', ']', '$']) {
            return Err(format!("`{word}` is not a header name"));
        }
        return Ok(Subject::Header(name.to_owned()));
    }
    if let Some(path) = word.strip_prefix('$') {
        return json_path(path).map(Subject::Json);
    }
    if word == "tlv.type" {
        return Ok(Subject::TlvType);
    }
    if let Some(rest) = word.strip_prefix("tlv.") {
        let (record, field) = rest
            .split_once('.')
            .ok_or_else(|| format!("`{word}`: expected tlv.type or tlv.<record>.<field>"))?;
        let (_, tlv_type, fields) = RECORDS
            .iter()
            .find(|(name, _, _)| *name == record)
            .ok_or_else(|| {
                let names: Vec<&str> = RECORDS.iter().map(|(n, _, _)| *n).collect();
                format!("unknown TLV record `{record}` (known: {})", names.join(", "))
            })?;
        let field = fields.iter().find(|f| **f == field).ok_or_else(|| {
            format!(
                "`{record}` has no field `{field}` (fields: {})",
                fields.join(", ")
            )
        })?;
        return Ok(Subject::TlvField(*tlv_type, field));
    }
    Err(format!(
        "`{word}` is not a subject: use header.<name>, $.json.path, tlv.type or tlv.<record>.<field>"
    ))
}

fn json_path(path: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            let key = &after[..end];
            if key.is_empty() {
                return Err(format!("`${path}`: empty key"));
            }
            steps.push(Step::Key(key.to_owned()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after
                .find(']')
                .ok_or_else(|| format!("`${path}`: `[` without `]`"))?;
            let index = after[..end]
                .parse()
                .map_err(|_| format!("`${path}`: `[{}]` is not an index", &after[..end]))?;
            steps.push(Step::Index(index));
            rest = &after[end + 1..];
        } else {
            return Err(format!("`${path}`: expected `.key` or `[index]`"));
        }
    }
    if steps.is_empty() {
        return Err("`$` alone is not a path: use $.field".into());
    }
    Ok(steps)
}
