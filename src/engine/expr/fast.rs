//! A native evaluation of the simple `where`s most stages have: comparisons of `key`, a header
//! or a payload field with a literal (`==`, `!=`, `<`, `<=`, `>`, `>=`), `startsWith`,
//! `endsWith` and `contains` on them, joined with `&&`, `||` and `!`. It reads the message in
//! place (the payload parsed only for the fields named) and answers only when it is sure to
//! give what CEL gives: whenever an operand is missing or of another type than its literal
//! (where CEL may give an error, or compare across types), it answers `None` and the caller
//! evaluates the expression with CEL, which then also words the error.

use super::payload::{Fields, Scalar};
use crate::brokers::Incoming;
use cel::common::ast::{Expr as E, IdedExpr, LiteralValue, operators};
use std::{borrow::Cow, cmp::Ordering};

/// A `where` evaluated natively.
#[derive(Debug)]
pub struct Fast {
    pred: Pred,
    /// The payload fields the predicate reads; none: the payload is not parsed.
    fields: Fields,
    reads_payload: bool,
}

#[derive(Debug)]
enum Pred {
    Cmp(Operand, Op, Lit),
    Str(Operand, StrFn, String),
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
}

#[derive(Debug)]
enum Operand {
    Key,
    Header(String),
    /// The slot of a payload path in [`Fast::fields`].
    Payload(usize),
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug)]
enum Lit {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

#[derive(Clone, Copy, Debug)]
enum StrFn {
    StartsWith,
    EndsWith,
    Contains,
}

impl Fast {
    /// The native form of `e`, when it has one.
    pub fn compile(e: &IdedExpr) -> Option<Fast> {
        let mut fields = Fields::default();
        let mut reads_payload = false;
        let pred = pred(e, &mut fields, &mut reads_payload)?;
        Some(Fast {
            pred,
            fields,
            reads_payload,
        })
    }

    /// What the expression gives on `msg`, when the native evaluation is sure of it.
    pub fn eval(&self, msg: &Incoming<'_>) -> Option<bool> {
        let text;
        let values = if self.reads_payload {
            text = msg.payload();
            self.fields.read(&text)?
        } else {
            Vec::new()
        };
        self.pred.eval(msg, &values)
    }
}

fn pred(e: &IdedExpr, fields: &mut Fields, reads_payload: &mut bool) -> Option<Pred> {
    let E::Call(c) = &e.expr else { return None };
    let name = c.func_name.as_str();
    match (name, &c.target, c.args.as_slice()) {
        (operators::LOGICAL_AND | operators::LOGICAL_OR, None, args) if args.len() >= 2 => {
            let parts = args
                .iter()
                .map(|a| pred(a, fields, reads_payload))
                .collect::<Option<Vec<_>>>()?;
            Some(if name == operators::LOGICAL_AND {
                Pred::And(parts)
            } else {
                Pred::Or(parts)
            })
        }
        (operators::LOGICAL_NOT, None, [a]) => {
            Some(Pred::Not(Box::new(pred(a, fields, reads_payload)?)))
        }
        ("startsWith" | "endsWith" | "contains", Some(target), [arg]) => {
            let f = match name {
                "startsWith" => StrFn::StartsWith,
                "endsWith" => StrFn::EndsWith,
                _ => StrFn::Contains,
            };
            let Some(Lit::Str(s)) = literal(arg) else {
                return None;
            };
            Some(Pred::Str(operand(target, fields, reads_payload)?, f, s))
        }
        (_, None, [l, r]) => {
            let op = match name {
                operators::EQUALS => Op::Eq,
                operators::NOT_EQUALS => Op::Ne,
                operators::LESS => Op::Lt,
                operators::LESS_EQUALS => Op::Le,
                operators::GREATER => Op::Gt,
                operators::GREATER_EQUALS => Op::Ge,
                _ => return None,
            };
            if let Some(lit) = literal(r) {
                Some(Pred::Cmp(operand(l, fields, reads_payload)?, op, lit))
            } else {
                // `'x' == key`: the literal on the left.
                let lit = literal(l)?;
                Some(Pred::Cmp(
                    operand(r, fields, reads_payload)?,
                    op.flipped(),
                    lit,
                ))
            }
        }
        _ => None,
    }
}

fn literal(e: &IdedExpr) -> Option<Lit> {
    match &e.expr {
        E::Literal(LiteralValue::String(s)) => Some(Lit::Str(s.inner().to_string())),
        E::Literal(LiteralValue::Int(i)) => Some(Lit::Int(*i.inner())),
        E::Literal(LiteralValue::Double(f)) => Some(Lit::Float(*f.inner())),
        E::Literal(LiteralValue::Boolean(b)) => Some(Lit::Bool(*b.inner())),
        _ => None,
    }
}

fn operand(e: &IdedExpr, fields: &mut Fields, reads_payload: &mut bool) -> Option<Operand> {
    if matches!(&e.expr, E::Ident(i) if i == "key") {
        return Some(Operand::Key);
    }
    // The names from the outside in: `payload.a["b"]` is ["b", "a"] over `payload`.
    let mut names = Vec::new();
    let mut cur = e;
    let root = loop {
        match &cur.expr {
            E::Ident(i) => break i.as_str(),
            E::Select(s) if !s.test => {
                names.push(s.field.clone());
                cur = &s.operand;
            }
            E::Call(c) if c.func_name == operators::INDEX && c.target.is_none() => {
                let [obj, idx] = c.args.as_slice() else {
                    return None;
                };
                let Some(Lit::Str(s)) = literal(idx) else {
                    return None;
                };
                names.push(s);
                cur = obj;
            }
            _ => return None,
        }
    };
    names.reverse();
    match (root, names.as_slice()) {
        ("headers", [name]) => Some(Operand::Header(name.clone())),
        ("payload", path) if !path.is_empty() => {
            *reads_payload = true;
            Some(Operand::Payload(fields.add(path)))
        }
        _ => None,
    }
}

impl Op {
    /// The operator with its operands swapped: `1 < x` is `x > 1`.
    fn flipped(self) -> Op {
        match self {
            Op::Lt => Op::Gt,
            Op::Le => Op::Ge,
            Op::Gt => Op::Lt,
            Op::Ge => Op::Le,
            same => same,
        }
    }

    fn holds(self, o: Ordering) -> bool {
        match self {
            Op::Eq => o.is_eq(),
            Op::Ne => o.is_ne(),
            Op::Lt => o.is_lt(),
            Op::Le => o.is_le(),
            Op::Gt => o.is_gt(),
            Op::Ge => o.is_ge(),
        }
    }
}

impl Pred {
    fn eval(&self, msg: &Incoming<'_>, values: &[Option<Scalar<'_>>]) -> Option<bool> {
        match self {
            Pred::And(parts) => {
                let mut all = true;
                for p in parts {
                    all &= p.eval(msg, values)?;
                }
                Some(all)
            }
            Pred::Or(parts) => {
                let mut any = false;
                for p in parts {
                    any |= p.eval(msg, values)?;
                }
                Some(any)
            }
            Pred::Not(p) => Some(!p.eval(msg, values)?),
            Pred::Str(operand, f, s) => {
                let v = operand.text(msg, values)?;
                Some(match f {
                    StrFn::StartsWith => v.starts_with(s.as_str()),
                    StrFn::EndsWith => v.ends_with(s.as_str()),
                    StrFn::Contains => v.contains(s.as_str()),
                })
            }
            Pred::Cmp(operand, op, lit) => {
                let ord = match (lit, operand) {
                    (Lit::Str(s), _) => operand.text(msg, values)?.as_ref().cmp(s.as_str()),
                    (_, Operand::Payload(slot)) => match (lit, values[*slot].as_ref()?) {
                        (Lit::Int(l), Scalar::Int(v)) => v.cmp(l),
                        (Lit::Float(l), Scalar::Float(v)) => v.partial_cmp(l)?,
                        (Lit::Bool(l), Scalar::Bool(v)) if matches!(op, Op::Eq | Op::Ne) => {
                            v.cmp(l)
                        }
                        _ => return None,
                    },
                    // `key` and headers are text (or null): CEL decides the rest.
                    _ => return None,
                };
                Some(op.holds(ord))
            }
        }
    }
}

impl Operand {
    /// The operand as text; `None` when it is missing or not text.
    fn text<'v>(
        &self,
        msg: &Incoming<'v>,
        values: &'v [Option<Scalar<'_>>],
    ) -> Option<Cow<'v, str>> {
        match self {
            Operand::Key => msg.key(),
            Operand::Header(name) => msg.header(name),
            Operand::Payload(slot) => match values[*slot].as_ref()? {
                Scalar::Str(s) => Some(Cow::Borrowed(s.as_ref())),
                _ => None,
            },
        }
    }
}
