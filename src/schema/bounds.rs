//! A walk over an Avro datum with its writer's schema that allocates nothing, before apache-avro
//! decodes it.
//!
//! apache-avro trusts the lengths a datum claims: an array that claims 500 million elements makes
//! it reserve 28 GB before reading the first one, a `fixed` of a huge declared size is allocated
//! whole, and a recursive schema is followed as deep as the datum says, on the stack. A writer
//! schema comes from the registry, a datum from any producer; neither is ours. So every datum read
//! with a schema other than our own (whose fast path is bounded by construction) is walked here
//! first: every length must fit in the bytes that remain, collections may hold at most
//! [`MAX_ITEMS`] elements in all (an element may take no bytes at all, such as a `null`, yet
//! costs a decoded value), and nesting stops at [`MAX_DEPTH`]. What passes decodes into values no
//! larger than a small multiple of the datum plus `MAX_ITEMS` values.

use apache_avro::Schema;
use apache_avro::schema::{NamesRef, Namespace, RecordSchema, ResolvedSchema};

/// Most elements of all arrays and maps of one datum together.
pub const MAX_ITEMS: usize = 65_536;
/// Deepest nesting of records, arrays, maps and unions.
pub const MAX_DEPTH: usize = 64;

/// Checks that `datum` is exactly one value of `schema` within the bounds above.
pub fn check(schema: &Schema, datum: &[u8]) -> Result<(), String> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
    let mut walk = Walk {
        names: resolved.get_names(),
        buf: datum,
        pos: 0,
        items: 0,
    };
    walk.value(schema, &None, 0)?;
    if walk.pos != datum.len() {
        return Err(format!(
            "{} bytes left after the record",
            datum.len() - walk.pos
        ));
    }
    Ok(())
}

struct Walk<'s> {
    names: &'s NamesRef<'s>,
    buf: &'s [u8],
    pos: usize,
    items: usize,
}

impl Walk<'_> {
    fn take(&mut self, n: usize) -> Result<(), String> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.buf.len() => {
                self.pos = end;
                Ok(())
            }
            _ => Err(format!(
                "a length of {n} runs past the datum ({} bytes left)",
                self.buf.len() - self.pos
            )),
        }
    }

    /// Avro's zig-zag varint long.
    fn long(&mut self) -> Result<i64, String> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err("datum ends inside a number".into());
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err("number longer than 10 bytes".into())
    }

    fn int(&mut self) -> Result<(), String> {
        let v = self.long()?;
        i32::try_from(v).map_err(|_| format!("{v} does not fit an int"))?;
        Ok(())
    }

    /// A length-prefixed run of bytes (bytes, string).
    fn sized(&mut self) -> Result<(), String> {
        let len = self.long()?;
        let len = usize::try_from(len).map_err(|_| format!("negative length {len}"))?;
        self.take(len)
    }

    /// An index into `n` choices (union branch, enum symbol).
    fn index(&mut self, n: usize, what: &str) -> Result<usize, String> {
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .filter(|i| *i < n)
            .ok_or_else(|| format!("{what} index {i} is not below {n}"))
    }

    /// The blocks of an array or a map: a count, then that many elements, until a count of 0.
    fn blocks(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                self.long()?;
            }
            let count = usize::try_from(count.unsigned_abs()).unwrap_or(usize::MAX);
            self.items = self.items.saturating_add(count);
            if self.items > MAX_ITEMS {
                return Err(format!(
                    "arrays and maps claim more than {MAX_ITEMS} elements in all"
                ));
            }
            for _ in 0..count {
                element(self)?;
            }
        }
    }

    fn value(&mut self, schema: &Schema, ns: &Namespace, depth: usize) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nest deeper than {MAX_DEPTH} levels"));
        }
        let deeper = depth + 1;
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => {
                let at = self.pos;
                self.take(1)?;
                match self.buf[at] {
                    0 | 1 => Ok(()),
                    b => Err(format!("boolean byte {b}")),
                }
            }
            Schema::Int | Schema::Date | Schema::TimeMillis => self.int(),
            Schema::Long
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Float => self.take(4),
            Schema::Double => self.take(8),
            Schema::Duration => self.take(12),
            Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Uuid => self.sized(),
            Schema::Fixed(fixed) => self.take(fixed.size),
            Schema::Decimal(decimal) => self.value(&decimal.inner, ns, deeper),
            Schema::Array(array) => self.blocks(|w| w.value(&array.items, ns, deeper)),
            Schema::Map(map) => self.blocks(|w| {
                w.sized()?;
                w.value(&map.types, ns, deeper)
            }),
            Schema::Union(union) => {
                let variants = union.variants();
                let i = self.index(variants.len(), "union branch")?;
                self.value(&variants[i], ns, deeper)
            }
            Schema::Record(RecordSchema { name, fields, .. }) => {
                let inner = name.fully_qualified_name(ns).namespace;
                fields
                    .iter()
                    .try_for_each(|field| self.value(&field.schema, &inner, deeper))
            }
            Schema::Enum(e) => self.index(e.symbols.len(), "enum symbol").map(drop),
            Schema::Ref { name } => {
                let name = name.fully_qualified_name(ns);
                let names = self.names;
                let named = names
                    .get(&name)
                    .ok_or_else(|| format!("schema names {name:?} without defining it"))?;
                self.value(named, &name.namespace, deeper)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(text: &str) -> Schema {
        Schema::parse_str(text).expect("schema parses")
    }

    /// Avro's zig-zag varint of `v`.
    fn long(v: i64) -> Vec<u8> {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        let mut out = Vec::new();
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn an_array_claiming_500_million_elements_is_refused_before_any_is_read() {
        let s = schema(r#"{"type":"array","items":"long"}"#);
        let datum = [long(500_000_000), vec![0; 16]].concat();
        let err = check(&s, &datum).unwrap_err();
        assert!(err.contains("more than 65536 elements"), "{err}");
    }

    #[test]
    fn elements_that_take_no_bytes_still_count_against_the_item_bound() {
        let s = schema(r#"{"type":"array","items":"null"}"#);
        let small = [long(1000), long(0)].concat();
        assert_eq!(check(&s, &small), Ok(()));
        let huge = [long(70_000), long(0)].concat();
        assert!(check(&s, &huge).is_err());
    }

    #[test]
    fn a_string_or_fixed_longer_than_what_remains_is_refused() {
        let s = schema(r#"{"type":"string"}"#);
        assert!(check(&s, &[long(1 << 40), b"abc".to_vec()].concat()).is_err());
        let f = schema(r#"{"type":"fixed","name":"Big","size":1000000000}"#);
        assert!(check(&f, b"tiny").is_err());
    }

    #[test]
    fn recursion_stops_at_the_depth_bound() {
        let s = schema(
            r#"{"type":"record","name":"Node","fields":[{"name":"next","type":["null","Node"]}]}"#,
        );
        // Ten levels, then null: fine. Ten thousand levels: refused, without a stack overflow.
        let shallow = [vec![2u8; 10], vec![0]].concat();
        assert_eq!(check(&s, &shallow), Ok(()));
        let deep = [vec![2u8; 10_000], vec![0]].concat();
        let err = check(&s, &deep).unwrap_err();
        assert!(err.contains("deeper than 64"), "{err}");
    }

    #[test]
    fn union_and_enum_indexes_must_name_a_branch() {
        let u = schema(r#"["null","string"]"#);
        assert!(check(&u, &long(2)).is_err());
        assert!(check(&u, &long(-1)).is_err());
        let e = schema(r#"{"type":"enum","name":"E","symbols":["A","B"]}"#);
        assert_eq!(check(&e, &long(1)), Ok(()));
        assert!(check(&e, &long(2)).is_err());
    }

    #[test]
    fn a_valid_map_passes_and_trailing_bytes_do_not() {
        let m = schema(r#"{"type":"map","values":"int"}"#);
        let datum = [long(1), long(1), b"k".to_vec(), long(7), long(0)].concat();
        assert_eq!(check(&m, &datum), Ok(()));
        assert!(check(&m, &[datum, vec![0]].concat()).is_err());
    }
}
