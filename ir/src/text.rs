//! The stable text form of a graph: a printer and a parser with `parse(print(g)) == g`
//! (for a compacted graph, see [`Graph::compact`]).
//!
//! ```text
//! graph yolo11n(%images: f32[N,3,640,640]) {
//!   weight %model.0.conv.weight: f32[16,3,3,3]
//!   %model.0.conv: f32[N,16,320,320] = conv2d(%images, %model.0.conv.weight) {stride=[2,2], pad=[1,1,1,1], dilation=[1,1], groups=1} @model.0
//!   return %model.0.conv
//! }
//! ```

use crate::error::{IrError, Result};
use crate::graph::{Graph, NodeId, ParamKind, Value, ValueDef, ValueId};
use crate::op::{Attr, Op, OpKind, ReshapeDim};
use crate::tensor::{DType, Dim, TensorType};
use std::collections::HashMap;
use std::fmt::Write;

/// Prints `g` in the text form.
pub fn print_graph(g: &Graph) -> String {
    let mut s = String::new();
    let name = |v: ValueId| format!("%{}", g.value(v).name);
    let typed = |v: ValueId| format!("%{}: {}", g.value(v).name, g.value(v).ty);
    let ins: Vec<String> = g.inputs.iter().map(|&v| typed(v)).collect();
    let _ = writeln!(s, "graph {}({}) {{", g.name, ins.join(", "));
    for &p in &g.params {
        if let ValueDef::Param(kind) = g.value(p).def {
            let _ = writeln!(s, "  {} {}", kind.keyword(), typed(p));
        }
    }
    for n in &g.nodes {
        let outs: Vec<String> = n.outputs.iter().map(|&v| typed(v)).collect();
        let args: Vec<String> = n.inputs.iter().map(|&v| name(v)).collect();
        let _ = write!(s, "  {} = {}({})", outs.join(", "), n.op.name(), args.join(", "));
        let attrs = n.op.attrs();
        if !attrs.is_empty() {
            let a: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = write!(s, " {{{}}}", a.join(", "));
        }
        if !n.scope.is_empty() {
            let _ = write!(s, " @{}", n.scope);
        }
        s.push('\n');
    }
    let outs: Vec<String> = g.outputs.iter().map(|&v| name(v)).collect();
    let _ = writeln!(s, "  return {}", outs.join(", "));
    s.push_str("}\n");
    s
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// A cursor over one line.
struct Cur<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Cur<'a> {
    fn err<T>(&self, msg: impl Into<String>) -> Result<T> {
        Err(IrError::Parse { line: self.line, msg: format!("{} (at column {})", msg.into(), self.pos + 1) })
    }
    fn ws(&mut self) {
        while self.s[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }
    fn peek(&mut self) -> Option<char> {
        self.ws();
        self.s[self.pos..].chars().next()
    }
    fn eat(&mut self, t: &str) -> bool {
        self.ws();
        if self.s[self.pos..].starts_with(t) {
            self.pos += t.len();
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: &str) -> Result<()> {
        if self.eat(t) {
            Ok(())
        } else {
            self.err(format!("expected `{t}`"))
        }
    }
    fn word(&mut self) -> Result<&'a str> {
        self.ws();
        let rest = &self.s[self.pos..];
        let len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
        if len == 0 {
            return self.err("expected a name");
        }
        self.pos += len;
        Ok(&rest[..len])
    }
    fn value_name(&mut self) -> Result<&'a str> {
        self.expect("%")?;
        self.word()
    }
    fn number(&mut self) -> Result<&'a str> {
        self.ws();
        let rest = &self.s[self.pos..];
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.' | '$' | '?')))
            .unwrap_or(rest.len());
        if len == 0 {
            return self.err("expected a number");
        }
        self.pos += len;
        Ok(&rest[..len])
    }
    fn ty(&mut self) -> Result<TensorType> {
        let dt = self.word()?;
        let dtype = match DType::from_name(dt) {
            Some(d) => d,
            None => return self.err(format!("unknown element type `{dt}`")),
        };
        self.expect("[")?;
        let mut shape = vec![];
        if !self.eat("]") {
            loop {
                let w = self.word()?;
                shape.push(match w.parse::<usize>() {
                    Ok(n) => Dim::Fixed(n),
                    Err(_) => Dim::Sym(w.to_string()),
                });
                if self.eat("]") {
                    break;
                }
                self.expect(",")?;
            }
        }
        Ok(TensorType { dtype, shape })
    }
    fn attr(&mut self) -> Result<Attr> {
        if self.eat("[") {
            let mut items: Vec<&str> = vec![];
            if !self.eat("]") {
                loop {
                    items.push(self.number()?);
                    if self.eat("]") {
                        break;
                    }
                    self.expect(",")?;
                }
            }
            if items.iter().any(|t| t.starts_with('$') || *t == "?") {
                let mut dims = vec![];
                for t in items {
                    dims.push(if t == "?" {
                        ReshapeDim::Infer
                    } else if let Some(r) = t.strip_prefix('$') {
                        let (a, b) = r.split_once('.').ok_or_else(|| self.perr(format!("bad dim `{t}`")))?;
                        ReshapeDim::Of { input: self.int(a)? as usize, axis: self.int(b)? as usize }
                    } else {
                        ReshapeDim::Fixed(self.int(t)? as usize)
                    });
                }
                return Ok(Attr::Dims(dims));
            }
            if items.iter().any(|t| is_float(t)) {
                return Ok(Attr::Floats(items.iter().map(|t| self.float(t)).collect::<Result<_>>()?));
            }
            return Ok(Attr::Ints(items.iter().map(|t| self.int(t)).collect::<Result<_>>()?));
        }
        let t = self.number()?;
        if is_float(t) {
            Ok(Attr::Float(self.float(t)?))
        } else {
            Ok(Attr::Int(self.int(t)?))
        }
    }
    fn perr(&self, msg: String) -> IrError {
        IrError::Parse { line: self.line, msg }
    }
    fn int(&self, t: &str) -> Result<i64> {
        t.parse().map_err(|_| self.perr(format!("bad integer `{t}`")))
    }
    fn float(&self, t: &str) -> Result<f32> {
        t.parse().map_err(|_| self.perr(format!("bad float `{t}`")))
    }
    fn end(&mut self) -> Result<()> {
        self.ws();
        if self.pos != self.s.len() {
            return self.err("unexpected text at end of line");
        }
        Ok(())
    }
}

fn is_float(t: &str) -> bool {
    t.contains('.') || t.contains('e') || t.contains("inf") || t.contains("NaN")
}

/// Parses the text form; errors name the line.
pub fn parse_graph(text: &str) -> Result<Graph> {
    let mut g = Graph::default();
    let mut ids: HashMap<String, ValueId> = HashMap::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end())).filter(|(_, l)| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with("//")
    });
    let (ln, header) = lines.next().ok_or(IrError::Parse { line: 1, msg: "empty graph text".into() })?;
    let mut c = Cur { s: header, pos: 0, line: ln };
    c.expect("graph")?;
    g.name = c.word()?.to_string();
    c.expect("(")?;
    if !c.eat(")") {
        loop {
            let name = c.value_name()?.to_string();
            c.expect(":")?;
            let ty = c.ty()?;
            define(&mut g, &mut ids, &c, name, ty, ValueDef::Input)?;
            if c.eat(")") {
                break;
            }
            c.expect(",")?;
        }
    }
    c.expect("{")?;
    c.end()?;
    let mut closed = false;
    for (ln, line) in lines.by_ref() {
        let mut c = Cur { s: line, pos: 0, line: ln };
        if c.eat("}") {
            c.end()?;
            closed = true;
            break;
        }
        if c.eat("return") {
            loop {
                let n = c.value_name()?;
                let v = *ids.get(n).ok_or_else(|| c.perr(format!("unknown value %{n}")))?;
                g.outputs.push(v);
                if !c.eat(",") {
                    break;
                }
            }
            c.end()?;
            continue;
        }
        if c.peek() != Some('%') {
            let kw = c.word()?;
            let kind = match ParamKind::from_keyword(kw) {
                Some(k) => k,
                None => return c.err(format!("expected a parameter keyword or a value, found `{kw}`")),
            };
            let name = c.value_name()?.to_string();
            c.expect(":")?;
            let ty = c.ty()?;
            c.end()?;
            define(&mut g, &mut ids, &c, name, ty, ValueDef::Param(kind))?;
            continue;
        }
        let mut outs = vec![];
        loop {
            let name = c.value_name()?.to_string();
            c.expect(":")?;
            outs.push((name, c.ty()?));
            if !c.eat(",") {
                break;
            }
        }
        c.expect("=")?;
        let opname = c.word()?;
        let kind = OpKind::from_name(opname).ok_or_else(|| c.perr(format!("unknown op `{opname}`")))?;
        c.expect("(")?;
        let mut args = vec![];
        if !c.eat(")") {
            loop {
                let n = c.value_name()?;
                args.push(*ids.get(n).ok_or_else(|| c.perr(format!("unknown value %{n}")))?);
                if c.eat(")") {
                    break;
                }
                c.expect(",")?;
            }
        }
        let mut attrs = vec![];
        if c.eat("{") {
            loop {
                let k = c.word()?.to_string();
                c.expect("=")?;
                attrs.push((k, c.attr()?));
                if c.eat("}") {
                    break;
                }
                c.expect(",")?;
            }
        }
        let scope = if c.eat("@") { c.word()?.to_string() } else { String::new() };
        c.end()?;
        let op = Op::from_attrs(kind, &attrs).map_err(|e| c.perr(e.to_string()))?;
        let node = NodeId(g.nodes.len());
        let mut out_ids = vec![];
        for (k, (name, ty)) in outs.into_iter().enumerate() {
            out_ids.push(define(&mut g, &mut ids, &c, name, ty, ValueDef::Node(node, k))?);
        }
        g.nodes.push(crate::graph::Node { op, inputs: args, outputs: out_ids, scope });
    }
    if !closed {
        return Err(IrError::Parse { line: text.lines().count(), msg: "missing closing `}`".into() });
    }
    if let Some((ln, _)) = lines.next() {
        return Err(IrError::Parse { line: ln, msg: "text after the closing `}`".into() });
    }
    crate::verify(&g)?;
    Ok(g)
}

fn define(
    g: &mut Graph,
    ids: &mut HashMap<String, ValueId>,
    c: &Cur,
    name: String,
    ty: TensorType,
    def: ValueDef,
) -> Result<ValueId> {
    if ids.contains_key(&name) {
        return Err(c.perr(format!("value %{name} is defined twice")));
    }
    let v = ValueId(g.values.len());
    g.values.push(Value { name: name.clone(), ty, def });
    match def {
        ValueDef::Input => g.inputs.push(v),
        ValueDef::Param(_) => g.params.push(v),
        ValueDef::Node(..) => {}
    }
    ids.insert(name, v);
    Ok(v)
}
