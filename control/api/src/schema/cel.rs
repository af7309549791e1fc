//! CEL validation rules (`x-kubernetes-validations`), evaluated with the `cel`
//! crate the way k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel does.
//!
//! `self` is the value at the schema node carrying the rule and `oldSelf` its
//! previous value on update; a rule that references `oldSelf` (a transition
//! rule) is skipped when there is no previous value.
//!
//! The environment is CEL's standard library (macros, `size`, `matches`,
//! `int()`, `string()`, durations, timestamps, optionals), the cel-go strings
//! extension (`lowerAscii`, `trim`, `split`, `join`, `replace`, `substring`,
//! `indexOf`, `format`, ...) and Kubernetes' regex `find`/`findAll`. Its
//! `isSorted`/`sum`/`min`/`max`, `quantity`, `url`, `ip`, `cidr`, `semver` and
//! `authz` libraries are missing: using them fails evaluation.
//!
//! # Cost
//!
//! Upstream types each rule against the schema and estimates its worst-case
//! cost from `maxItems`/`maxLength`, refusing rules over 10,000,000 units,
//! then meters evaluation at 1,000,000 units per call. Here:
//! * at compile time the schema is unknown: a comprehension over a literal
//!   iterates its length, any other [`ASSUMED_COLLECTION_LEN`] times, at one
//!   unit plus its loop condition and step's nodes an iteration, nested ones
//!   multiplying: double nesting passes, triple nesting over data is refused.
//! * at run time the crate has no cost tracking, so each comprehension's range
//!   is wrapped in an internal `@meter(range, weight)` call that charges
//!   `size(range) * weight` against [`PER_CALL_LIMIT`] before the loop runs.
//!   This bounds every loop (the only non-linear work in CEL); operations on
//!   large strings and list equality stay unmetered but linear in input size.

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString as Str, CelUInt,
    DYN_TYPE, INT_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::{Context, DeclarationError, Env, ExecutionError, Value};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Upstream's `StaticEstimatedCostLimit`: the largest estimated cost of one expression.
pub const STATIC_ESTIMATED_COST_LIMIT: f64 = 10_000_000.0;
/// Upstream's `PerCallLimit`: the largest actual cost of one evaluation.
pub const PER_CALL_LIMIT: i64 = 1_000_000;
/// Elements assumed for a collection whose size isn't known when compiling.
pub const ASSUMED_COLLECTION_LEN: f64 = 300.0;
/// Upstream's `MaxEvaluatedMessageExpressionSizeBytes`.
const MAX_MESSAGE_BYTES: usize = 5 * 1024;
const METER: &str = "@meter";
const COST_EXCEEDED: &str = "operation cancelled: actual cost limit exceeded";
/// Type names that may appear as free identifiers besides the variables.
const TYPE_NAMES: &str = "bool bytes double dyn int list map null_type string type uint";

thread_local! {
    /// Cost left to the evaluation running on this thread.
    static BUDGET: Cell<i64> = const { Cell::new(0) };
}

/// A compiled rule.
#[derive(Clone, Debug)]
pub struct Rule {
    expr: IdedExpr,
    message: Option<IdedExpr>,
    uses_old_self: bool,
    cost: f64,
}

/// Compile `rule` (and an optional messageExpression). Refuses syntax errors,
/// references to undeclared variables, and expressions whose estimated cost
/// (see the module docs) exceeds [`STATIC_ESTIMATED_COST_LIMIT`], with
/// upstream's wording.
pub fn compile(rule: &str, message_expression: Option<&str>) -> Result<Rule, String> {
    let mut compiled = compile_expr(rule, "rule", "")?;
    if let Some(src) = message_expression {
        let message = compile_expr(src, "messageExpression", "messageExpression ")?;
        compiled.cost += message.cost;
        compiled.message = Some(message.expr);
    }
    Ok(compiled)
}

/// `self` and `oldSelf` converted to CEL once, for every rule of one
/// schema node (converting the value is most of a simple rule's cost).
/// The CEL values borrow the JSON's strings.
pub struct Bindings<'v> {
    ctx: Context<'v, 'v>,
    has_old: bool,
}

impl std::fmt::Debug for Bindings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bindings")
            .field("has_old", &self.has_old)
            .finish_non_exhaustive()
    }
}

impl<'v> Bindings<'v> {
    /// Bind `self` and, on update, `oldSelf`.
    pub fn new(self_: &'v serde_json::Value, old_self: Option<&'v serde_json::Value>) -> Self {
        let mut ctx = Context::with_env(env());
        ctx.add_variable_as_val("self", to_val(self_));
        if let Some(old) = old_self {
            ctx.add_variable_as_val("oldSelf", to_val(old));
        }
        Self {
            ctx,
            has_old: old_self.is_some(),
        }
    }
}

impl Rule {
    /// Evaluate with `self` bound to `self_` and `oldSelf` to `old_self`
    /// ([`Rule::eval_with`] on fresh [`Bindings`]).
    /// `Ok(None)` when the rule holds or is a transition rule without an old
    /// value, `Ok(Some(message))` when it evaluates to false (`message` is the
    /// messageExpression's trimmed result, or empty when there is none or it
    /// fails, isn't a string, is blank, has a line break or exceeds 5KiB: the
    /// caller then falls back to `message` or "failed rule: ..."), and `Err`
    /// on an evaluation error, a non-bool result or an exceeded
    /// [`PER_CALL_LIMIT`] ("operation cancelled: actual cost limit exceeded").
    pub fn eval(
        &self,
        self_: &serde_json::Value,
        old_self: Option<&serde_json::Value>,
    ) -> Result<Option<String>, String> {
        if self.uses_old_self && old_self.is_none() {
            return Ok(None);
        }
        self.eval_with(&Bindings::new(self_, old_self))
    }

    /// Evaluate against bindings shared by the rules of one node; as
    /// [`Rule::eval`].
    pub fn eval_with(&self, b: &Bindings<'_>) -> Result<Option<String>, String> {
        if self.uses_old_self && !b.has_old {
            return Ok(None);
        }
        let ctx = &b.ctx;
        let valid = |s: &str| !s.contains('\n') && s.len() <= MAX_MESSAGE_BYTES;
        match run(&self.expr, ctx)? {
            Value::Bool(true) => Ok(None),
            Value::Bool(false) => Ok(Some(match self.message.as_ref().map(|m| run(m, ctx)) {
                Some(Ok(Value::String(s))) if valid(s.trim()) => s.trim().to_owned(),
                _ => String::new(),
            })),
            _ => Err("cel expression must evaluate to a bool".to_owned()),
        }
    }

    /// Whether the rule references oldSelf.
    pub fn uses_old_self(&self) -> bool {
        self.uses_old_self
    }

    /// The static cost estimate of the rule and its messageExpression (see the
    /// module docs), e.g. to add up against upstream's per-CRD 100,000,000.
    pub fn estimated_cost(&self) -> f64 {
        self.cost
    }
}

/// Parses, checks and instruments one expression; `what` names it in errors.
fn compile_expr(src: &str, what: &str, prefix: &str) -> Result<Rule, String> {
    let (mut expr, info) = env()
        .parser()
        .parse_with_source_info(src)
        .map_err(|e| format!("{prefix}compilation failed: {e}"))?;
    let mut scan = Scan::default();
    scan.walk(&expr, &mut Vec::new());
    if let Some((id, name)) = scan.undeclared {
        let offset = info.offset_for(id).map_or(0, |(start, _)| start as usize);
        let before = src.get(..offset).unwrap_or(src);
        let line = before.matches('\n').count() + 1;
        let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        return Err(format!(
            "{prefix}compilation failed: ERROR: <input>:{line}:{col}: \
             undeclared reference to '{name}' (in container '')"
        ));
    }
    let cost = estimate(&expr);
    if cost > STATIC_ESTIMATED_COST_LIMIT {
        let factor = match cost / STATIC_ESTIMATED_COST_LIMIT {
            f if f > 100.0 => "more than 100x".to_owned(),
            f if f < 1.5 => format!("{f:.6}x"),
            f => format!("{f:.1}x"),
        };
        return Err(format!(
            "estimated {what} cost exceeds budget by factor of {factor} (try simplifying the \
             rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and \
             strings are declared)"
        ));
    }
    instrument(&mut expr);
    Ok(Rule {
        expr,
        message: None,
        uses_old_self: scan.uses_old_self,
        cost,
    })
}

/// The shared environment: the standard library, the strings extension,
/// Kubernetes' `find`/`findAll` and the internal meter.
fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    let env = || Arc::new(build_env().expect("CEL overloads are registered once"));
    ENV.get_or_init(env).clone()
}

fn build_env() -> Result<Env, DeclarationError> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings)?;
    env.add_overload(METER, "meter", vec![DYN_TYPE, INT_TYPE], meter)?;
    cel::add_member_overload!(env, fn find: (Str<'_>, Str<'_>) -> Result<Str<'_>>)?;
    cel::add_member_overload!(env, fn find_all: (Str<'_>, Str<'_>) -> Result<CelList<'_>>)?;
    cel::add_member_overload!(env, fn find_all_n: (Str<'_>, Str<'_>, CelInt) -> Result<CelList<'_>>,
        name = "findAll")?;
    Ok(env)
}

/// Evaluates `expr` with a fresh [`PER_CALL_LIMIT`] budget.
fn run(expr: &IdedExpr, ctx: &Context<'_, '_>) -> Result<Value, String> {
    BUDGET.with(|b| b.set(PER_CALL_LIMIT));
    let result = Value::resolve(expr, ctx);
    // An exceeded budget may have been absorbed by `&&`/`||`: report it anyway.
    if BUDGET.with(Cell::get) < 0 {
        return Err(COST_EXCEEDED.to_owned());
    }
    result.map_err(|e| match e {
        ExecutionError::NoSuchKey(key) => format!("no such key: {key}"),
        ExecutionError::NoSuchOverload(o) => format!("no such overload: {o}"),
        other => other.to_string(),
    })
}

/// `@meter(range, weight)`: charges `size(range) * weight`, returns `range`.
fn meter<'b, 'v>(mut args: Vec<CowVal<'b, 'v>>) -> Fallible<CowVal<'b, 'v>> {
    let cost = match args.as_slice() {
        [range, weight] => {
            let weight = weight.downcast_ref::<CelInt>().map_or(1, |w| *w.inner());
            range
                .as_sizer()
                .map_or(0, |s| *s.size().inner())
                .saturating_mul(weight)
        }
        _ => 0,
    };
    BUDGET.with(|b| b.set(b.get().saturating_sub(cost)));
    args.truncate(1);
    match args.pop() {
        Some(range) if BUDGET.with(Cell::get) >= 0 => Ok(range),
        _ => Err(ExecutionError::function_error(METER, COST_EXCEEDED)),
    }
}

type Fallible<T> = Result<T, ExecutionError>;

fn regex(re: &Str<'_>, function: &str) -> Fallible<regex::Regex> {
    regex::Regex::new(re).map_err(|e| ExecutionError::function_error(function, e))
}

/// `s.find(re)`: the first match, or "".
fn find(this: &Str<'_>, re: &Str<'_>) -> Fallible<Str<'static>> {
    let found = regex(re, "find")?.find(this).map_or("", |m| m.as_str());
    Ok(Str::from(found.to_owned()))
}

/// `s.findAll(re)`: every match.
fn find_all(this: &Str<'_>, re: &Str<'_>) -> Fallible<CelList<'static>> {
    find_all_n(this, re, &CelInt::from(-1))
}

/// `s.findAll(re, n)`: at most `n` matches, all when `n` is negative.
fn find_all_n(this: &Str<'_>, re: &Str<'_>, n: &CelInt) -> Fallible<CelList<'static>> {
    let limit = usize::try_from(*n.inner()).unwrap_or(usize::MAX);
    Ok(regex(re, "findAll")?
        .find_iter(this)
        .take(limit)
        .map(|m| Box::new(Str::from(m.as_str().to_owned())) as Box<dyn Val>)
        .collect::<Vec<_>>()
        .into())
}

/// JSON as CEL: objects → maps, arrays → lists, integers → int (uint past
/// i64), other numbers → double. Built directly as the evaluator's values
/// (what `Value` → `Box<dyn Val>` gives), borrowing the strings.
fn to_val(v: &serde_json::Value) -> Box<dyn Val + '_> {
    match v {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => Box::new(CelBool::from(*b)),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Box::new(CelInt::from(i)),
            (None, Some(u)) => Box::new(CelUInt::from(u)),
            _ => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        serde_json::Value::String(s) => Box::new(Str::from(s.as_str())),
        serde_json::Value::Array(a) => Box::new(CelList::from(
            a.iter().map(to_val).collect::<Vec<Box<dyn Val + '_>>>(),
        )),
        serde_json::Value::Object(o) => Box::new(CelMap::from(
            o.iter()
                .map(|(k, v)| (CelMapKey::from(k.as_str()), to_val(v)))
                .collect::<HashMap<_, _>>(),
        )),
    }
}

fn children(e: &Expr) -> Vec<&IdedExpr> {
    match e {
        Expr::Call(c) => c.target.as_deref().into_iter().chain(&c.args).collect(),
        Expr::Comprehension(c) => [&c.iter_range, &c.accu_init, &c.loop_cond]
            .into_iter()
            .chain([&c.loop_step, &c.result])
            .collect(),
        Expr::List(l) => l.elements.iter().collect(),
        Expr::Map(m) => m.entries.iter().flat_map(|en| entry(&en.expr)).collect(),
        Expr::Select(s) => vec![&*s.operand],
        _ => Vec::new(),
    }
}

fn entry(e: &EntryExpr) -> Vec<&IdedExpr> {
    match e {
        EntryExpr::StructField(f) => vec![&f.value],
        EntryExpr::MapEntry(m) => vec![&m.key, &m.value],
    }
}

fn nodes(e: &IdedExpr) -> i64 {
    1 + children(&e.expr).into_iter().map(nodes).sum::<i64>()
}

/// Static cost: one unit a node, a comprehension's body once per element.
fn estimate(e: &IdedExpr) -> f64 {
    let Expr::Comprehension(c) = &e.expr else {
        return 1.0 + children(&e.expr).into_iter().map(estimate).sum::<f64>();
    };
    let iterations = match &c.iter_range.expr {
        Expr::List(l) => l.elements.len() as f64,
        Expr::Map(m) => m.entries.len() as f64,
        _ => ASSUMED_COLLECTION_LEN,
    };
    let body = 1.0 + estimate(&c.loop_cond) + estimate(&c.loop_step);
    estimate(&c.iter_range) + estimate(&c.accu_init) + estimate(&c.result) + iterations * body
}

/// Wraps every comprehension's range in `@meter(range, weight)`.
fn instrument(e: &mut IdedExpr) {
    if let Expr::Comprehension(c) = &mut e.expr {
        let weight = CelInt::from(1 + nodes(&c.loop_cond) + nodes(&c.loop_step));
        let range = std::mem::take(&mut c.iter_range);
        let args = vec![range, node(Expr::Literal(LiteralValue::Int(weight)))];
        let func_name = METER.to_owned();
        let target = None;
        c.iter_range = node(Expr::Call(CallExpr {
            func_name,
            target,
            args,
        }));
    }
    match &mut e.expr {
        Expr::Comprehension(c) => {
            let parts = [&mut c.iter_range, &mut c.accu_init, &mut c.loop_step];
            parts
                .into_iter()
                .chain([&mut c.loop_cond, &mut c.result])
                .for_each(instrument);
        }
        Expr::Call(c) => c
            .target
            .iter_mut()
            .map(|t| &mut **t)
            .chain(&mut c.args)
            .for_each(instrument),
        Expr::List(l) => l.elements.iter_mut().for_each(instrument),
        Expr::Map(m) => m.entries.iter_mut().for_each(|en| entry_mut(&mut en.expr)),
        Expr::Select(s) => instrument(&mut s.operand),
        _ => {}
    }
}

fn node(expr: Expr) -> IdedExpr {
    IdedExpr { id: 0, expr }
}

fn entry_mut(e: &mut EntryExpr) {
    match e {
        EntryExpr::StructField(f) => instrument(&mut f.value),
        EntryExpr::MapEntry(m) => [&mut m.key, &mut m.value].into_iter().for_each(instrument),
    }
}

/// Free identifiers: whether `oldSelf` is used, and the first undeclared one.
#[derive(Default)]
struct Scan {
    uses_old_self: bool,
    undeclared: Option<(u64, String)>,
}

impl Scan {
    fn walk<'e>(&mut self, e: &'e IdedExpr, bound: &mut Vec<&'e str>) {
        match &e.expr {
            Expr::Ident(name) if bound.contains(&name.as_str()) => {}
            Expr::Ident(name) if name == "oldSelf" => self.uses_old_self = true,
            Expr::Ident(name) if name == "self" || TYPE_NAMES.split(' ').any(|t| t == name) => {}
            Expr::Ident(name) if self.undeclared.is_none() => {
                self.undeclared = Some((e.id, name.clone()));
            }
            // `optional.of(x)`, `strings.quote(s)`: a namespace, not a variable.
            Expr::Call(c)
                if matches!(c.target.as_deref(), Some(IdedExpr { expr: Expr::Ident(n), .. })
                if !bound.contains(&n.as_str()) && n != "self" && n != "oldSelf") =>
            {
                c.args.iter().for_each(|a| self.walk(a, bound));
            }
            Expr::Comprehension(c) => {
                self.walk(&c.iter_range, bound);
                self.walk(&c.accu_init, bound);
                let depth = bound.len();
                bound.extend([c.iter_var.as_str(), c.accu_var.as_str()]);
                bound.extend(c.iter_var2.as_deref());
                for part in [&c.loop_cond, &c.loop_step, &c.result] {
                    self.walk(part, bound);
                }
                bound.truncate(depth);
            }
            other => children(other)
                .into_iter()
                .for_each(|c| self.walk(c, bound)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FALSE: Result<Option<String>, String> = Ok(Some(String::new()));

    /// Compiled rules can be shared between threads.
    fn _shareable(rule: Rule) -> impl Send + Sync {
        rule
    }

    fn check(rule: &str, value: serde_json::Value) -> Result<Option<String>, String> {
        compile(rule, None)?.eval(&value, None)
    }

    #[test]
    fn common_rules() {
        let obj = json!({"name": "web-1", "replicas": 3, "ratio": 0.5, "tags": ["a", "bb"],
                         "labels": {"app": "web"}});
        for rule in [
            "has(self.name) && !has(self.missing) && self.size() == 5",
            "self.tags.all(t, t.size() <= 10) && self.labels.all(k, k.size() < 64)",
            "self.tags.exists(t, t == 'bb') && self.tags.exists_one(t, t == 'a')",
            "self.tags.map(t, t + '!').filter(t, t.startsWith('b')) == ['bb!']",
            "self.name.startsWith('web') && self.name.endsWith('-1') && self.name.contains('b-')",
            "self.name.matches('^[a-z]+-[0-9]+$') && self.all(k, self.exists(j, j == k))",
            "self.replicas <= 10 && int('3') == self.replicas && string(self.replicas) == '3'",
            "self.ratio < 1.0 && self.labels['app'] == 'web' && 'app' in self.labels",
            "self.name.upperAscii() == 'WEB-1' && ' x '.trim() == 'x' && !has(self.x)",
            "self.name.split('-') == ['web', '1'] && ['a', 'b'].join('-') == 'a-b'",
            "self.name.find('[0-9]+') == '1' && 'a1b22'.findAll('[0-9]+') == ['1', '22']",
        ] {
            assert_eq!(check(rule, obj.clone()), Ok(None), "{rule}");
        }
        assert_eq!(check("self.replicas > 5", obj.clone()), FALSE);
        assert_eq!(check("self.tags.all(t, t.size() == 1)", obj), FALSE);
    }

    #[test]
    fn message_expression() {
        let msg = "'min (' + string(self.min) + ') > max'";
        let rule = compile("self.min <= self.max", Some(msg)).expect("compiles");
        assert_eq!(rule.eval(&json!({"min": 1, "max": 2}), None), Ok(None));
        let failed = rule.eval(&json!({"min": 3, "max": 2}), None);
        assert_eq!(failed, Ok(Some("min (3) > max".into())));
        // Not a string, blank, or failing: the caller falls back to message.
        for m in ["self.min", "'  '", "self.nope", "'a\\nb'"] {
            let rule = compile("false", Some(m)).expect("compiles");
            assert_eq!(rule.eval(&json!({"min": 3}), None), FALSE, "{m}");
        }
    }

    #[test]
    fn transition_rules() {
        let rule = compile("self == oldSelf", None).expect("compiles");
        assert!(rule.uses_old_self());
        let v = json!({"a": [1, {"b": "c"}]});
        assert_eq!(rule.eval(&v, None), Ok(None), "skipped: no old value");
        assert_eq!(rule.eval(&v, Some(&v.clone())), Ok(None));
        assert_eq!(rule.eval(&v, Some(&json!({"a": [2]}))), FALSE);
        let shadowed = compile("[1].all(oldSelf, oldSelf > 0)", None).expect("compiles");
        assert!(!shadowed.uses_old_self());
    }

    #[test]
    fn errors() {
        let err = compile("self.x ==", None).expect_err("syntax error");
        assert!(
            err.starts_with("compilation failed: ERROR: <input>:1:"),
            "{err}"
        );
        let err = compile("self.x == foo", None).expect_err("undeclared");
        let want = "ERROR: <input>:1:11: undeclared reference to 'foo' (in container '')";
        assert_eq!(err, format!("compilation failed: {want}"));
        let err = compile("true", Some("'a' +")).expect_err("bad messageExpression");
        assert!(
            err.starts_with("messageExpression compilation failed: "),
            "{err}"
        );
        assert!(compile("type(self) == map && optional.of(1).hasValue()", None).is_ok());
        // Evaluation errors.
        let err = check("self.missing == 1", json!({})).expect_err("no such key");
        assert_eq!(err, "no such key: missing");
        let err = check("self.x + 1", json!({"x": 1})).expect_err("not a bool");
        assert_eq!(err, "cel expression must evaluate to a bool");
        assert!(check("self.x > 'a'", json!({"x": 1})).is_err());
        assert!(check("self.lowerAscii().quantity()", json!("A")).is_err());
    }

    #[test]
    fn cost_budget() {
        let unique = "self.all(a, self.exists_one(b, a.name == b.name && a.port == b.port))";
        assert!(compile(unique, None).is_ok());
        let err = compile("self.a.all(x, x.b.all(y, y.all(z, z > 0)))", None).expect_err("cost");
        let want = "estimated rule cost exceeds budget by factor of 21.7x (try simplifying";
        assert!(err.starts_with(want), "{err}");
        // Literal ranges are costed at their length.
        assert!(compile("[1, 2].all(x, [3].all(y, [4].all(z, x + y + z > 0)))", None).is_ok());
        // The runtime meter stops a doubly nested loop over a large list.
        let big = json!((0..2000).collect::<Vec<_>>());
        let rule = compile("self.all(x, self.exists(y, y == x))", None).expect("compiles");
        assert_eq!(rule.eval(&big, None), Err(COST_EXCEEDED.to_owned()));
        assert_eq!(rule.eval(&json!([1, 2, 3]), None), Ok(None));
    }
}
