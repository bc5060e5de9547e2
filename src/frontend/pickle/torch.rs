//! The callables a PyTorch checkpoint's pickle calls whose results matter: `OrderedDict`,
//! `set`, `_codecs.encode`, torch's tensor and parameter rebuilders, `torch.Size` and NumPy
//! scalars. Everything else becomes an opaque [`Value::Object`].

use super::value::{Id, StorageDtype, TensorRef, Value};
use super::vm::{Vm, R};

impl Vm<'_> {
    /// Calls `callable(*args)` for the callables whose results matter; anything else becomes
    /// an [`Value::Object`].
    pub(super) fn call(&mut self, callable: Id, args: Id) -> R<Value> {
        let (module, name) = match &self.values[callable.0] {
            Value::Global { module, name } => (module.clone(), name.clone()),
            Value::Object { class, .. } => return self.err(format!("calling an instance of {class} is not supported")),
            other => return self.err(format!("REDUCE on a value that is not a class or function: {other:?}")),
        };
        let a = self.tuple_items(args);
        Ok(match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") | ("builtins" | "__builtin__", "dict") => {
                let mut items = vec![];
                if let Some(&first) = a.first() {
                    for pair in self.tuple_items(first) {
                        if let [k, v] = self.tuple_items(pair)[..] {
                            items.push((k, v));
                        }
                    }
                }
                Value::Dict(items)
            }
            ("builtins" | "__builtin__", "set" | "frozenset") => {
                Value::Set(a.first().map(|&l| self.tuple_items(l)).unwrap_or_default())
            }
            ("builtins" | "__builtin__", "list") => {
                Value::List(a.first().map(|&l| self.tuple_items(l)).unwrap_or_default())
            }
            ("builtins" | "__builtin__", "tuple") | ("torch", "Size") => {
                Value::Tuple(a.first().map(|&l| self.tuple_items(l)).unwrap_or_default())
            }
            ("_codecs", "encode") => {
                let s = a.first().and_then(|&s| self.str_value(s)).unwrap_or_default();
                let mut out = Vec::with_capacity(s.len());
                for c in s.chars() {
                    match u8::try_from(u32::from(c)) {
                        Ok(b) => out.push(b),
                        Err(_) => return self.err("_codecs.encode of a character outside latin-1"),
                    }
                }
                Value::Bytes(out)
            }
            ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => self.rebuild_tensor(&a)?,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => match a.first() {
                Some(&t) if matches!(self.values[t.0], Value::Tensor(_)) => self.values[t.0].clone(),
                _ => return self.err("_rebuild_parameter without a tensor"),
            },
            ("numpy.core.multiarray" | "numpy._core.multiarray", "scalar") => self.numpy_scalar(&a, &module, &name),
            _ => Value::Object { class: format!("{module}.{name}"), args: a, state: None, items: vec![] },
        })
    }

    pub(super) fn rebuild_tensor(&self, a: &[Id]) -> R<Value> {
        if a.len() < 4 {
            return self.err("_rebuild_tensor_v2 needs storage, offset, size and stride");
        }
        let Value::PersistentId(pid) = &self.values[a[0].0] else {
            return self.err("tensor storage is not a persistent id");
        };
        let fields = self.tuple_items(*pid);
        // ('storage', torch.<Type>Storage, key, location, numel)
        if fields.len() < 5 || self.str_value(fields[0]) != Some("storage") {
            return self.err("persistent id is not ('storage', type, key, location, numel)");
        }
        let dtype = match &self.values[fields[1].0] {
            Value::Global { module, name } if module == "torch" => match StorageDtype::from_class(name) {
                Some(d) => d,
                None => return self.err(format!("unsupported storage type torch.{name}")),
            },
            other => return self.err(format!("storage type is not a torch storage class: {other:?}")),
        };
        let key = match &self.values[fields[2].0] {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            _ => return self.err("storage key is not a string"),
        };
        let storage_numel = match self.int_value(fields[4]) {
            Some(n) if n >= 0 => n as u64,
            _ => return self.err(format!("storage {key} has no valid element count")),
        };
        let offset = match self.int_value(a[1]) {
            Some(o) if o >= 0 => o as u64,
            _ => return self.err("tensor storage offset is not a non-negative integer"),
        };
        let size = self.ints(a[2], "size")?;
        let stride = self.ints(a[3], "stride")?;
        if size.len() != stride.len() {
            return self.err(format!("tensor size {size:?} and stride {stride:?} differ in rank"));
        }
        Ok(Value::Tensor(TensorRef { key, dtype, storage_numel, offset, size, stride }))
    }

    /// `numpy.core.multiarray.scalar(dtype, bytes)` for the float and integer dtypes.
    pub(super) fn numpy_scalar(&self, a: &[Id], module: &str, name: &str) -> Value {
        let opaque =
            || Value::Object { class: format!("{module}.{name}"), args: a.to_vec(), state: None, items: vec![] };
        let (Some(&dt), Some(&raw)) = (a.first(), a.get(1)) else { return opaque() };
        let code = match &self.values[dt.0] {
            Value::Object { args, .. } => args.first().and_then(|&c| self.str_value(c)).unwrap_or_default().to_string(),
            _ => return opaque(),
        };
        let Value::Bytes(b) = &self.values[raw.0] else { return opaque() };
        match (code.as_str(), b.len()) {
            ("f8", 8) => Value::Float(f64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))),
            ("f4", 4) => Value::Float(f32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4])) as f64),
            ("i8", 8) => Value::Int(i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]))),
            ("i4", 4) => Value::Int(i32::from_le_bytes(b[..4].try_into().unwrap_or([0; 4])) as i64),
            _ => opaque(),
        }
    }
}
