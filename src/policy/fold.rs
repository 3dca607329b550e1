//! Constant folding of WHERE clauses, to recognise tautologies on the AST
//! (never by matching text).
//!
//! Folding follows SQL three-valued logic: `NULL` folds to [`Const::Null`]
//! ("unknown"), which is *not* true, so `WHERE NULL` and `WHERE 1 = NULL` are
//! not tautologies (they match no row). `AND`/`OR` short-circuit the way
//! Postgres' truth tables do: `x OR true` is true whatever `x` is, and
//! `x AND false` is false.
//!
//! Two deliberate non-constant rules, because the issue asks for them:
//! `e = e` (and `<=`, `>=`, `IS NOT DISTINCT FROM`) with the same column
//! expression on both sides is treated as true although it is NULL for rows
//! where `e` is NULL; and `e IS NULL OR e IS NOT NULL` is true. Expressions
//! containing function calls or subqueries are never treated that way
//! (`random() = random()` is not a tautology).

use std::cell::Cell;

use sqlparser::ast::{BinaryOperator, CastKind, DataType, Expr, UnaryOperator, Value};

/// A folded constant.
#[derive(Debug, Clone, PartialEq)]
pub enum Const {
    Bool(bool),
    Num(f64),
    /// A string literal (Postgres' "unknown" type until coerced).
    Str(String),
    Null,
}

/// Maximum recursion depth of the folder. `AND`/`OR` chains are flattened
/// iteratively and do not count against it; other nesting is bounded by the
/// lexer (parentheses ≤ 200). Exceeding it makes the answer `None`
/// ("cannot tell"), which the classifier turns into `unparsed` — a
/// tautology must not hide behind depth.
const MAX_DEPTH: usize = 400;

/// Does `e` fold to true? `None` when the expression is too deep to tell.
pub fn is_tautology(e: &Expr) -> Option<bool> {
    let deep = Cell::new(false);
    let t = matches!(as_bool(fold(e, 0, &deep)), Some(true));
    if deep.get() {
        None
    } else {
        Some(t)
    }
}

/// Fold without reporting depth (for callers that only need a constant).
pub fn fold_const(e: &Expr) -> Option<Const> {
    fold(e, 0, &Cell::new(false))
}

/// Interpret a constant as a boolean the way Postgres coerces a WHERE
/// operand: booleans as is, string literals via boolean input syntax.
fn as_bool(c: Option<Const>) -> Option<bool> {
    match c? {
        Const::Bool(b) => Some(b),
        Const::Str(s) => parse_bool(&s),
        _ => None,
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "t" | "tr" | "tru" | "true" | "y" | "ye" | "yes" | "on" | "1" => Some(true),
        "f" | "fa" | "fal" | "fals" | "false" | "n" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

fn num(c: &Const) -> Option<f64> {
    match c {
        Const::Num(n) => Some(*n),
        Const::Str(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
}

/// Fold `e` to a constant, or `None` when it is not constant.
fn fold(e: &Expr, depth: usize, deep: &Cell<bool>) -> Option<Const> {
    if depth > MAX_DEPTH {
        deep.set(true);
        return None;
    }
    let d = depth + 1;
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(s, _) => s.parse::<f64>().ok().map(Const::Num),
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s)
            | Value::NationalStringLiteral(s) => Some(Const::Str(s.clone())),
            Value::DollarQuotedString(s) => Some(Const::Str(s.value.clone())),
            Value::Boolean(b) => Some(Const::Bool(*b)),
            Value::Null => Some(Const::Null),
            _ => None,
        },
        Expr::Nested(inner) => fold(inner, d, deep),
        Expr::UnaryOp { op, expr } => {
            let c = fold(expr, d, deep)?;
            match op {
                UnaryOperator::Not => match c {
                    Const::Null => Some(Const::Null),
                    other => as_bool(Some(other)).map(|b| Const::Bool(!b)),
                },
                UnaryOperator::Minus => num(&c).map(|n| Const::Num(-n)),
                UnaryOperator::Plus => num(&c).map(Const::Num),
                _ => None,
            }
        }
        Expr::BinaryOp { left, op, right } => fold_binary(e, left, op, right, d, deep),
        Expr::IsNull(x) => match fold(x, d, deep)? {
            Const::Null => Some(Const::Bool(true)),
            _ => Some(Const::Bool(false)),
        },
        Expr::IsNotNull(x) => match fold(x, d, deep)? {
            Const::Null => Some(Const::Bool(false)),
            _ => Some(Const::Bool(true)),
        },
        Expr::IsTrue(x) => Some(Const::Bool(as_bool(fold(x, d, deep))?)),
        Expr::IsNotFalse(x) => match fold(x, d, deep)? {
            Const::Null => Some(Const::Bool(true)),
            c => Some(Const::Bool(as_bool(Some(c))?)),
        },
        Expr::IsFalse(x) => Some(Const::Bool(!as_bool(fold(x, d, deep))?)),
        Expr::IsNotTrue(x) => match fold(x, d, deep)? {
            Const::Null => Some(Const::Bool(true)),
            c => Some(Const::Bool(!as_bool(Some(c))?)),
        },
        Expr::IsNotDistinctFrom(a, b) => {
            if same_column_expr(a, b, deep) {
                return Some(Const::Bool(true));
            }
            match (fold(a, d, deep)?, fold(b, d, deep)?) {
                (Const::Null, Const::Null) => Some(Const::Bool(true)),
                (Const::Null, _) | (_, Const::Null) => Some(Const::Bool(false)),
                (x, y) => compare(&x, &y).map(|o| Const::Bool(o == std::cmp::Ordering::Equal)),
            }
        }
        Expr::IsDistinctFrom(a, b) => {
            if same_column_expr(a, b, deep) {
                return Some(Const::Bool(false));
            }
            match (fold(a, d, deep)?, fold(b, d, deep)?) {
                (Const::Null, Const::Null) => Some(Const::Bool(false)),
                (Const::Null, _) | (_, Const::Null) => Some(Const::Bool(true)),
                (x, y) => compare(&x, &y).map(|o| Const::Bool(o != std::cmp::Ordering::Equal)),
            }
        }
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let v = fold(expr, d, deep)?;
            let lo = fold(low, d, deep)?;
            let hi = fold(high, d, deep)?;
            if matches!(v, Const::Null) || matches!(lo, Const::Null) || matches!(hi, Const::Null) {
                return Some(Const::Null);
            }
            let inside = compare(&v, &lo)?.is_ge() && compare(&v, &hi)?.is_le();
            Some(Const::Bool(inside != *negated))
        }
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let v = fold(expr, d, deep)?;
            if matches!(v, Const::Null) {
                return Some(Const::Null);
            }
            let mut found = false;
            for item in list {
                let c = fold(item, d, deep)?;
                if compare(&v, &c) == Some(std::cmp::Ordering::Equal) {
                    found = true;
                }
            }
            Some(Const::Bool(found != *negated))
        }
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            data_type,
            ..
        } => cast(fold(expr, d, deep)?, data_type),
        _ => None,
    }
}

fn cast(c: Const, ty: &DataType) -> Option<Const> {
    if matches!(c, Const::Null) {
        return Some(Const::Null);
    }
    let name = ty.to_string().to_ascii_lowercase();
    if name.starts_with("bool") {
        return as_bool(Some(c)).map(Const::Bool);
    }
    let numeric = [
        "int", "smallint", "bigint", "numeric", "decimal", "real", "double", "float",
    ];
    if numeric.iter().any(|p| name.starts_with(p)) {
        return num(&c).map(Const::Num);
    }
    if name.starts_with("text") || name.starts_with("varchar") || name.starts_with("char") {
        return match c {
            Const::Str(s) => Some(Const::Str(s)),
            Const::Num(n) => Some(Const::Str(n.to_string())),
            Const::Bool(b) => Some(Const::Str(if b { "true" } else { "false" }.into())),
            Const::Null => Some(Const::Null),
        };
    }
    None
}

fn compare(a: &Const, b: &Const) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Const::Str(x), Const::Str(y)) => Some(x.cmp(y)),
        (Const::Bool(x), Const::Bool(y)) => Some(x.cmp(y)),
        (Const::Bool(x), Const::Str(s)) => parse_bool(s).map(|y| x.cmp(&y)),
        (Const::Str(s), Const::Bool(y)) => parse_bool(s).map(|x| x.cmp(y)),
        (Const::Null, _) | (_, Const::Null) => None,
        _ => num(a)?.partial_cmp(&num(b)?),
    }
}

fn fold_binary(
    whole: &Expr,
    left: &Expr,
    op: &BinaryOperator,
    right: &Expr,
    d: usize,
    deep: &Cell<bool>,
) -> Option<Const> {
    use BinaryOperator as B;
    match op {
        B::And | B::Or => {
            let operands = flatten(whole, op);
            let is_or = matches!(op, B::Or);
            if is_or && has_null_or_not_null_pair(&operands, deep) {
                return Some(Const::Bool(true));
            }
            // Three-valued AND/OR over all operands.
            let (absorbing, neutral) = if is_or {
                (Tri::T, Tri::F)
            } else {
                (Tri::F, Tri::T)
            };
            let mut all_known = true;
            let mut any_unknown = false;
            for x in &operands {
                match fold(x, d, deep).map(|c| tri(Some(c))) {
                    Some(t) if t == absorbing => return Some(Const::Bool(is_or)),
                    Some(t) if t == neutral => {}
                    Some(_) => any_unknown = true,
                    None => all_known = false,
                }
            }
            if !all_known {
                None
            } else if any_unknown {
                Some(Const::Null)
            } else {
                Some(Const::Bool(!is_or))
            }
        }
        B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq => {
            if same_column_expr(left, right, deep) {
                return Some(Const::Bool(matches!(op, B::Eq | B::LtEq | B::GtEq)));
            }
            let l = fold(left, d, deep)?;
            let r = fold(right, d, deep)?;
            if matches!(l, Const::Null) || matches!(r, Const::Null) {
                return Some(Const::Null);
            }
            let o = compare(&l, &r)?;
            use std::cmp::Ordering::*;
            Some(Const::Bool(match op {
                B::Eq => o == Equal,
                B::NotEq => o != Equal,
                B::Lt => o == Less,
                B::LtEq => o != Greater,
                B::Gt => o == Greater,
                _ => o != Less,
            }))
        }
        B::Plus | B::Minus | B::Multiply | B::Divide | B::Modulo => {
            let l = fold(left, d, deep)?;
            let r = fold(right, d, deep)?;
            if matches!(l, Const::Null) || matches!(r, Const::Null) {
                return Some(Const::Null);
            }
            let (x, y) = (num(&l)?, num(&r)?);
            let v = match op {
                B::Plus => x + y,
                B::Minus => x - y,
                B::Multiply => x * y,
                B::Divide if y != 0.0 => x / y,
                B::Modulo if y != 0.0 => x % y,
                _ => return None,
            };
            v.is_finite().then_some(Const::Num(v))
        }
        B::StringConcat => match (fold(left, d, deep)?, fold(right, d, deep)?) {
            (Const::Str(a), Const::Str(b)) => Some(Const::Str(a + &b)),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Tri {
    T,
    F,
    U,
}

fn tri(c: Option<Const>) -> Tri {
    match c {
        Some(Const::Null) => Tri::U,
        other => match as_bool(other) {
            Some(true) => Tri::T,
            Some(false) => Tri::F,
            None => Tri::U,
        },
    }
}

/// Operands of a chain of the same AND/OR operator, iteratively (chains are
/// left-deep and can be long; no recursion).
fn flatten<'e>(e: &'e Expr, op: &BinaryOperator) -> Vec<&'e Expr> {
    let mut out = Vec::new();
    let mut stack = vec![e];
    while let Some(x) = stack.pop() {
        match x {
            Expr::BinaryOp { left, op: o, right } if o == op => {
                stack.push(right);
                stack.push(left);
            }
            Expr::Nested(inner) if matches!(inner.as_ref(), Expr::BinaryOp { op: o, .. } if o == op) => {
                stack.push(inner)
            }
            other => out.push(other),
        }
    }
    out
}

/// Some `e IS NULL` and `e IS NOT NULL` for the same `e` among the operands
/// (all pairs for short chains, neighbours for long ones).
fn has_null_or_not_null_pair(ops: &[&Expr], deep: &Cell<bool>) -> bool {
    if ops.len() <= 64 {
        ops.iter()
            .enumerate()
            .any(|(i, a)| ops[i + 1..].iter().any(|b| is_null_or_not_null(a, b, deep)))
    } else {
        ops.windows(2)
            .any(|w| is_null_or_not_null(w[0], w[1], deep))
    }
}

fn unnest(e: &Expr) -> &Expr {
    let mut e = e;
    // Bounded by the lexer's nesting limit.
    while let Expr::Nested(inner) = e {
        e = inner;
    }
    e
}

/// `e IS NULL OR e IS NOT NULL` (either order, same `e`).
fn is_null_or_not_null(a: &Expr, b: &Expr, deep: &Cell<bool>) -> bool {
    match (unnest(a), unnest(b)) {
        (Expr::IsNull(x), Expr::IsNotNull(y)) | (Expr::IsNotNull(x), Expr::IsNull(y)) => {
            is_pure(x, 0, deep) && x == y
        }
        _ => false,
    }
}

/// Same non-constant, side-effect-free column expression on both sides.
fn same_column_expr(a: &Expr, b: &Expr, deep: &Cell<bool>) -> bool {
    let (a, b) = (unnest(a), unnest(b));
    mentions_column(a, 0, deep) && is_pure(a, 0, deep) && a == b
}

fn mentions_column(e: &Expr, depth: usize, deep: &Cell<bool>) -> bool {
    if depth > MAX_DEPTH {
        deep.set(true);
        return false;
    }
    match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => true,
        Expr::Nested(x) | Expr::UnaryOp { expr: x, .. } | Expr::Cast { expr: x, .. } => {
            mentions_column(x, depth + 1, deep)
        }
        Expr::BinaryOp { left, right, .. } => {
            mentions_column(left, depth + 1, deep) || mentions_column(right, depth + 1, deep)
        }
        _ => false,
    }
}

/// Only identifiers, literals and operators: no function calls (which may
/// be volatile), no subqueries.
fn is_pure(e: &Expr, depth: usize, deep: &Cell<bool>) -> bool {
    if depth > MAX_DEPTH {
        deep.set(true);
        return false;
    }
    match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) => true,
        Expr::Nested(x) | Expr::UnaryOp { expr: x, .. } | Expr::Cast { expr: x, .. } => {
            is_pure(x, depth + 1, deep)
        }
        Expr::BinaryOp { left, right, .. } => {
            is_pure(left, depth + 1, deep) && is_pure(right, depth + 1, deep)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlparser::dialect::PostgreSqlDialect;
    use sqlparser::parser::Parser;

    fn taut(where_clause: &str) -> bool {
        let sql = format!("SELECT 1 FROM t WHERE {where_clause}");
        let stmts = Parser::parse_sql(&PostgreSqlDialect {}, &sql).expect("parse");
        let sqlparser::ast::Statement::Query(q) = &stmts[0] else {
            panic!("not a query")
        };
        let sqlparser::ast::SetExpr::Select(s) = q.body.as_ref() else {
            panic!("not a select")
        };
        is_tautology(s.selection.as_ref().expect("where")) == Some(true)
    }

    #[test]
    fn recognises_tautologies() {
        for w in [
            "true",
            "1=1",
            "'a'='a'",
            "NOT false",
            "x = x",
            "t.x = t.x",
            "id > 5 OR true",
            "1 < 2",
            "(true)",
            "true AND 1=1",
            "'1'::int = 1",
            "NOT (1=2)",
            "2 > 1",
            "x IS NULL OR x IS NOT NULL",
            "'t'",
            "1 + 1 = 2",
            "1 BETWEEN 0 AND 2",
            "1 IN (1, 2)",
            "NULL IS NULL",
            "x IS NOT DISTINCT FROM x",
            "CAST('true' AS boolean)",
            "((((1=1))))",
        ] {
            assert!(taut(w), "{w} should be a tautology");
        }
    }

    #[test]
    fn does_not_flag_restrictions_or_unknowns() {
        for w in [
            "id = 1",
            "NULL",
            "1 = NULL",
            "NULL AND true",
            "false",
            "x = y",
            "random() = random()",
            "id = $1",
            "1 = 2",
            "x IS NULL",
            "x = x + 1",
            "true AND id = 1",
            "'a' = 'b'",
            "NOT true",
            "x IS NULL OR y IS NOT NULL",
        ] {
            assert!(!taut(w), "{w} must not be a tautology");
        }
    }
}
