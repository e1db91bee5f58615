//! A payload's JSON read straight into what expressions compare, with no `serde_json::Value` in
//! between: the whole document as a CEL value ([`to_cel`]), or only the fields a simple `where`
//! names ([`Fields`]). Both read numbers as [`super::json_to_cel`] does: an integer that fits
//! `i64` is `int`, a larger one `uint`, others `double`; of a key given twice, the last counts.

use cel::{
    Value,
    objects::{Key, Map},
};
use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess};
use std::{borrow::Cow, collections::HashMap, fmt, sync::Arc};

/// The payload as a CEL value when it is JSON (a whole document, nothing after it).
pub fn to_cel(text: &str) -> Option<Value> {
    let mut d = serde_json::Deserializer::from_str(text);
    let v = d.deserialize_any(CelVisitor).ok()?;
    d.end().ok()?;
    Some(v)
}

struct CelVisitor;

impl<'de> de::Visitor<'de> for CelVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::UInt(u), Value::Int))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(Arc::new(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(Arc::new(s)))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(x) = seq.next_element_seed(CelSeed)? {
            v.push(x);
        }
        Ok(Value::List(Arc::new(v)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = HashMap::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let v = map.next_value_seed(CelSeed)?;
            m.insert(Key::String(Arc::new(k.into_owned())), v);
        }
        Ok(Value::Map(Map { map: Arc::new(m) }))
    }
}

struct CelSeed;

impl<'de> DeserializeSeed<'de> for CelSeed {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(CelVisitor)
    }
}

/// A JSON value at a path, as far as a simple comparison needs it.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Null,
    List,
    Object,
}

/// The payload paths (`payload.a.b` is `["a", "b"]`) a simple `where` reads, as a tree walked
/// while the payload is parsed: what no path names is skipped (still checked to be JSON).
#[derive(Debug, Default)]
pub struct Fields {
    root: Node,
    slots: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: Vec<(String, Node)>,
    /// The slot of the value at this path, when a path ends here.
    slot: Option<usize>,
}

impl Fields {
    /// Adds `path` (not empty); returns its slot.
    pub fn add(&mut self, path: &[String]) -> usize {
        let mut node = &mut self.root;
        for name in path {
            let i = match node.children.iter().position(|(n, _)| n == name) {
                Some(i) => i,
                None => {
                    node.children.push((name.clone(), Node::default()));
                    node.children.len() - 1
                }
            };
            node = &mut node.children[i].1;
        }
        *node.slot.get_or_insert_with(|| {
            self.slots += 1;
            self.slots - 1
        })
    }

    /// The value at each slot (`None` where the path is not there), or `None` when the payload
    /// is not JSON or not an object.
    pub fn read<'a>(&self, text: &'a str) -> Option<Vec<Option<Scalar<'a>>>> {
        let mut out = vec![None; self.slots];
        let mut d = serde_json::Deserializer::from_str(text);
        let root = d
            .deserialize_any(Walk {
                node: &self.root,
                out: &mut out,
            })
            .ok()?;
        d.end().ok()?;
        (root == Scalar::Object).then_some(out)
    }
}

/// Reads a value at `node`, recording the values of the paths that end below it.
struct Walk<'n, 'o, 'a> {
    node: &'n Node,
    out: &'o mut Vec<Option<Scalar<'a>>>,
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_, 'de> {
    type Value = Scalar<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Scalar<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> de::Visitor<'de> for Walk<'_, '_, 'de> {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Scalar<'de>, E> {
        Ok(i64::try_from(u).map_or(Scalar::UInt(u), Scalar::Int))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Float(f))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Str(Cow::Owned(s)))
    }
    fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
        Ok(Scalar::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::List)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar<'de>, A::Error> {
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let Some((_, child)) = self.node.children.iter().find(|(n, _)| *n == k) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            // A later occurrence of the key replaces an earlier one, paths below it included.
            clear(child, self.out);
            let v = map.next_value_seed(Walk {
                node: child,
                out: self.out,
            })?;
            if let Some(slot) = child.slot {
                self.out[slot] = Some(v);
            }
        }
        Ok(Scalar::Object)
    }
}

/// A key of an object: borrowed from the text unless it has escapes (serde's own `Cow` always
/// copies).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> de::Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E>(self, s: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// Forgets the values recorded at and below `node`.
fn clear(node: &Node, out: &mut [Option<Scalar<'_>>]) {
    if let Some(s) = node.slot {
        out[s] = None;
    }
    for (_, c) in &node.children {
        clear(c, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCS: &[&str] = &[
        r#"{"seq":1,"pad":"xx"}"#,
        r#"{"a":{"b":"c\"d","n":-3},"f":1.5,"big":18446744073709551615,"t":true,"z":null}"#,
        r#"{"a":1,"a":{"b":2}}"#,
        r#"{"a":{"b":2},"a":1}"#,
        r#"[1,2,{"a":1}]"#,
        r#""text""#,
        "12",
        r#"{"e":"caf\u00e9","l":[1,{"x":[]}],"o":{}}"#,
        r#"{"seq":1} trailing"#,
        r#"{"seq":"#,
        "not json",
        "",
    ];

    #[test]
    fn the_whole_payload_reads_as_through_serde_json_value() {
        for doc in DOCS {
            let expected = serde_json::from_str::<serde_json::Value>(doc)
                .ok()
                .map(|j| super::super::json_to_cel(&j));
            assert_eq!(to_cel(doc), expected, "{doc}");
        }
    }

    #[test]
    fn fields_read_as_the_whole_payload_does() {
        let paths: Vec<Vec<String>> = [
            "seq", "pad", "a", "a.b", "a.n", "f", "big", "t", "z", "e", "l", "o", "nope",
        ]
        .iter()
        .map(|p| p.split('.').map(String::from).collect())
        .collect();
        let mut fields = Fields::default();
        let slots: Vec<usize> = paths.iter().map(|p| fields.add(p)).collect();
        for doc in DOCS {
            let whole = to_cel(doc);
            let read = fields.read(doc);
            let Some(Value::Map(root)) = whole else {
                assert_eq!(read, None, "{doc}");
                continue;
            };
            let read = read.unwrap();
            for (path, slot) in paths.iter().zip(&slots) {
                let mut v = Some(Value::Map(root.clone()));
                for name in path {
                    v = match v {
                        Some(Value::Map(m)) => m.map.get(&Key::from(name.as_str())).cloned(),
                        _ => None,
                    };
                }
                let expected = v.map(|v| match v {
                    Value::String(s) => Scalar::Str(Cow::Owned(s.to_string())),
                    Value::Int(i) => Scalar::Int(i),
                    Value::UInt(u) => Scalar::UInt(u),
                    Value::Float(f) => Scalar::Float(f),
                    Value::Bool(b) => Scalar::Bool(b),
                    Value::Null => Scalar::Null,
                    Value::List(_) => Scalar::List,
                    _ => Scalar::Object,
                });
                assert_eq!(read[*slot], expected, "{doc} {path:?}");
            }
        }
    }
}
