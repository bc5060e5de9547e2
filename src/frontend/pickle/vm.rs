//! The pickle VM: reads opcodes, builds [`Value`]s on a stack with a memo, and never runs
//! code. The callables whose result matters are interpreted in [`super::torch`].

use super::opcodes as op;
use super::value::{Id, Pickle, Value};
use std::collections::HashMap;
use std::fmt;

/// Why a pickle stream could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct PickleError {
    /// Byte offset in the stream.
    pub at: usize,
    /// What went wrong.
    pub msg: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pickle byte {}: {}", self.at, self.msg)
    }
}

impl std::error::Error for PickleError {}

pub(super) struct Vm<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
    pub(super) at: usize,
    pub(super) values: Vec<Value>,
    pub(super) stack: Vec<Id>,
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u64, Id>,
}

pub(super) type R<T> = std::result::Result<T, PickleError>;

impl<'a> Vm<'a> {
    pub(super) fn err<T>(&self, msg: impl Into<String>) -> R<T> {
        Err(PickleError { at: self.at, msg: msg.into() })
    }

    pub(super) fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if n > self.data.len() - self.pos {
            return self.err(format!(
                "{} needs {n} bytes, {} remain",
                op::name(self.data[self.at]),
                self.data.len() - self.pos
            ));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub(super) fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> R<u16> {
        Ok(u16::from_le_bytes([self.take(1)?[0], self.take(1)?[0]]))
    }

    pub(super) fn u32(&mut self) -> R<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(super) fn u64(&mut self) -> R<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub(super) fn line(&mut self) -> R<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return self.err(format!("{} has no end of line", op::name(self.data[self.at])));
        };
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).or_else(|_| self.err("text argument is not UTF-8"))
    }

    pub(super) fn len_arg(&mut self, n: u64) -> R<usize> {
        let remaining = (self.data.len() - self.pos) as u64;
        if n > remaining {
            return self.err(format!("{} declares {n} bytes, {remaining} remain", op::name(self.data[self.at])));
        }
        Ok(n as usize)
    }

    pub(super) fn push(&mut self, v: Value) {
        self.values.push(v);
        self.stack.push(Id(self.values.len() - 1));
    }

    pub(super) fn pop(&mut self) -> R<Id> {
        match self.stack.pop() {
            Some(id) => Ok(id),
            None => self.err(format!("{} on an empty stack", op::name(self.data[self.at]))),
        }
    }

    pub(super) fn top(&self) -> R<Id> {
        match self.stack.last() {
            Some(id) => Ok(*id),
            None => self.err(format!("{} on an empty stack", op::name(self.data[self.at]))),
        }
    }

    pub(super) fn pop_mark(&mut self) -> R<Vec<Id>> {
        let Some(m) = self.marks.pop() else {
            return self.err(format!("{} without a MARK", op::name(self.data[self.at])));
        };
        if m > self.stack.len() {
            return self.err("MARK beyond the stack");
        }
        Ok(self.stack.split_off(m))
    }

    pub(super) fn memo_get(&mut self, k: u64) -> R<()> {
        match self.memo.get(&k) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.err(format!("memo key {k} was never stored")),
        }
    }

    pub(super) fn memo_put(&mut self, k: u64) -> R<()> {
        let id = self.top()?;
        self.memo.insert(k, id);
        Ok(())
    }

    pub(super) fn str_value(&self, id: Id) -> Option<&str> {
        match &self.values[id.0] {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn int_value(&self, id: Id) -> Option<i64> {
        match &self.values[id.0] {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    pub(super) fn ints(&self, id: Id, what: &str) -> R<Vec<u64>> {
        let items = match &self.values[id.0] {
            Value::Tuple(t) | Value::List(t) => t.clone(),
            _ => return self.err(format!("tensor {what} is not a tuple")),
        };
        items
            .iter()
            .map(|&i| match self.int_value(i) {
                Some(v) if v >= 0 => Ok(v as u64),
                _ => self.err(format!("tensor {what} holds a value that is not a non-negative integer")),
            })
            .collect()
    }

    pub(super) fn tuple_items(&self, id: Id) -> Vec<Id> {
        match &self.values[id.0] {
            Value::Tuple(t) | Value::List(t) => t.clone(),
            _ => vec![],
        }
    }

    pub(super) fn build(&mut self) -> R<()> {
        let state = self.pop()?;
        let obj = self.top()?;
        match &mut self.values[obj.0] {
            Value::Object { state: s, .. } => *s = Some(state),
            // Tensors and parameters carry no state that matters for their data; dicts rebuilt
            // by OrderedDict get their items through SETITEMS.
            Value::Tensor(_) | Value::Dict(_) => {}
            other => {
                let what = format!("{other:?}");
                return self.err(format!("BUILD on a value that is not an object: {what}"));
            }
        }
        Ok(())
    }

    pub(super) fn set_items(&mut self, target: Id, pairs: Vec<Id>) -> R<()> {
        if pairs.len() % 2 != 0 {
            return self.err("SETITEMS with an odd number of values");
        }
        let kv = pairs.chunks_exact(2).map(|c| (c[0], c[1]));
        match &mut self.values[target.0] {
            Value::Dict(d) => {
                for (k, v) in kv {
                    d.push((k, v));
                }
            }
            Value::Object { items, .. } => items.extend(kv),
            _ => return self.err("SETITEM on a value that is not a dict"),
        }
        Ok(())
    }

    pub(super) fn append(&mut self, target: Id, items: Vec<Id>) -> R<()> {
        match &mut self.values[target.0] {
            Value::List(l) | Value::Set(l) => l.extend(items),
            Value::Object { args, .. } => args.extend(items),
            _ => return self.err("APPEND on a value that is not a list"),
        }
        Ok(())
    }

    pub(super) fn run(&mut self) -> R<Id> {
        loop {
            self.at = self.pos;
            if self.pos >= self.data.len() {
                return self.err("the stream ends without STOP");
            }
            let op = self.u8()?;
            match op {
                op::PROTO => {
                    let p = self.u8()?;
                    if p > 5 {
                        return self.err(format!("pickle protocol {p} is newer than 5"));
                    }
                }
                op::FRAME => {
                    self.u64()?;
                }
                op::STOP => return self.pop(),
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    self.pop()?;
                }
                op::POP_MARK => {
                    self.pop_mark()?;
                }
                op::DUP => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                op::NONE => self.push(Value::None),
                op::NEWTRUE => self.push(Value::Bool(true)),
                op::NEWFALSE => self.push(Value::Bool(false)),
                op::BININT => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64));
                }
                op::BININT1 => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64));
                }
                op::BININT2 => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64));
                }
                op::INT | op::LONG => {
                    let line = self.line()?.trim_end_matches('L');
                    let v = match line {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        s => s.parse::<i64>().map(Value::Int).unwrap_or(Value::BigInt),
                    };
                    self.push(v);
                }
                op::LONG1 | op::LONG4 => {
                    let n = if op == op::LONG1 { self.u8()? as u64 } else { self.u32()? as u64 };
                    let n = self.len_arg(n)?;
                    let b = self.take(n)?;
                    let v = if n <= 8 {
                        let fill = if b.last().is_some_and(|&x| x & op::PROTO != 0) { 0xff } else { 0 };
                        let mut a = [fill; 8];
                        a[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(a))
                    } else {
                        Value::BigInt
                    };
                    self.push(v);
                }
                op::BINFLOAT => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.push(Value::Float(f64::from_be_bytes(a)));
                }
                op::FLOAT => {
                    let line = self.line()?;
                    match line.trim().parse::<f64>() {
                        Ok(f) => self.push(Value::Float(f)),
                        Err(_) => return self.err(format!("FLOAT `{line}` is not a number")),
                    }
                }
                op::BINUNICODE | op::SHORT_BINUNICODE | op::BINUNICODE8 => {
                    let n = match op {
                        op::BINUNICODE => self.u32()? as u64,
                        op::SHORT_BINUNICODE => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_arg(n)?;
                    let b = self.take(n)?;
                    match std::str::from_utf8(b) {
                        Ok(s) => self.push(Value::Str(s.to_string())),
                        Err(_) => return self.err("string is not UTF-8"),
                    }
                }
                op::UNICODE => {
                    let s = self.line()?.to_string();
                    self.push(Value::Str(s));
                }
                op::BINSTRING
                | op::SHORT_BINSTRING
                | op::BINBYTES
                | op::SHORT_BINBYTES
                | op::BINBYTES8
                | op::BYTEARRAY8 => {
                    let n = match op {
                        op::BINSTRING | op::BINBYTES => self.u32()? as u64,
                        op::SHORT_BINSTRING | op::SHORT_BINBYTES => self.u8()? as u64,
                        _ => self.u64()?,
                    };
                    let n = self.len_arg(n)?;
                    let b = self.take(n)?.to_vec();
                    // Python 2 strings (BINSTRING) are text in practice; keep them as str when
                    // they decode, as Python 3's default `encoding="ASCII"` load does.
                    let v = match (op, String::from_utf8(b)) {
                        (op::BINSTRING | op::SHORT_BINSTRING, Ok(s)) => Value::Str(s),
                        (_, Ok(s)) => Value::Bytes(s.into_bytes()),
                        (_, Err(e)) => Value::Bytes(e.into_bytes()),
                    };
                    self.push(v);
                }
                op::STRING => {
                    let s = self.line()?.trim_matches(|c| c == '\'' || c == '"').to_string();
                    self.push(Value::Str(s));
                }
                op::EMPTY_TUPLE => self.push(Value::Tuple(vec![])),
                op::TUPLE => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(items));
                }
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = (op - op::EXT4) as usize;
                    if self.stack.len() < n {
                        return self.err(format!("{} needs {n} values on the stack", op::name(op)));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Value::Tuple(items));
                }
                op::EMPTY_LIST => self.push(Value::List(vec![])),
                op::LIST => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(items));
                }
                op::APPEND => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append(l, vec![v])?;
                }
                op::APPENDS => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append(l, items)?;
                }
                op::EMPTY_DICT => self.push(Value::Dict(vec![])),
                op::DICT => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(vec![]));
                    let d = self.top()?;
                    self.set_items(d, items)?;
                }
                op::SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, vec![k, v])?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, items)?;
                }
                op::EMPTY_SET => self.push(Value::Set(vec![])),
                op::ADDITEMS => {
                    let items = self.pop_mark()?;
                    let s = self.top()?;
                    self.append(s, items)?;
                }
                op::FROZENSET => {
                    let items = self.pop_mark()?;
                    self.push(Value::Set(items));
                }
                op::GLOBAL => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.push(Value::Global { module, name });
                }
                op::STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (self.str_value(module), self.str_value(name)) {
                        (Some(m), Some(n)) => {
                            let v = Value::Global { module: m.to_string(), name: n.to_string() };
                            self.push(v);
                        }
                        _ => return self.err("STACK_GLOBAL needs two strings"),
                    }
                }
                op::REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(callable, args)?;
                    self.push(v);
                }
                op::NEWOBJ | op::NEWOBJ_EX => {
                    if op == op::NEWOBJ_EX {
                        self.pop()?; // kwargs
                    }
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.call(cls, args)?;
                    self.push(v);
                }
                op::BUILD => self.build()?,
                op::BINPERSID => {
                    let pid = self.pop()?;
                    self.push(Value::PersistentId(pid));
                }
                op::PERSID => {
                    let s = self.line()?.to_string();
                    self.push(Value::Str(s));
                    let pid = self.pop()?;
                    self.push(Value::PersistentId(pid));
                }
                op::BINPUT => {
                    let k = self.u8()? as u64;
                    self.memo_put(k)?;
                }
                op::LONG_BINPUT => {
                    let k = self.u32()? as u64;
                    self.memo_put(k)?;
                }
                op::PUT => {
                    let line = self.line()?;
                    let Ok(k) = line.parse::<u64>() else { return self.err(format!("PUT key `{line}`")) };
                    self.memo_put(k)?;
                }
                op::MEMOIZE => {
                    let k = self.memo.len() as u64;
                    self.memo_put(k)?;
                }
                op::BINGET => {
                    let k = self.u8()? as u64;
                    self.memo_get(k)?;
                }
                op::LONG_BINGET => {
                    let k = self.u32()? as u64;
                    self.memo_get(k)?;
                }
                op::GET => {
                    let line = self.line()?;
                    let Ok(k) = line.parse::<u64>() else { return self.err(format!("GET key `{line}`")) };
                    self.memo_get(k)?;
                }
                other => {
                    return self.err(format!("unsupported pickle opcode 0x{other:02x} ({})", op::name(other)));
                }
            }
        }
    }
}

/// Decodes a pickle stream into an arena of values.
pub fn load(data: &[u8]) -> Result<Pickle, PickleError> {
    let mut vm = Vm { data, pos: 0, at: 0, values: vec![], stack: vec![], marks: vec![], memo: HashMap::new() };
    let root = vm.run()?;
    Ok(Pickle { values: vm.values, root: Some(root) })
}
