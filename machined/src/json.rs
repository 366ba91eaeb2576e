//! A tiny JSON writer: enough for one status object, with correct string escaping (RFC 8259).

/// Appends `s` to `out` as a JSON string literal, quotes included.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            // Other control characters, and DEL and the line/paragraph separators, which are valid
            // JSON but break line-oriented readers and JavaScript.
            c if (c as u32) < 0x20 || c == '\u{7f}' || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON string literal for `s`.
#[cfg(test)]
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    write_str(&mut out, s);
    out
}

/// Builds one JSON object, member by member, in insertion order.
#[derive(Clone, Debug)]
pub struct Object {
    buf: String,
}

impl Default for Object {
    fn default() -> Self {
        Self::new()
    }
}

impl Object {
    pub fn new() -> Self {
        Object { buf: String::from("{") }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if self.buf.len() > 1 {
            self.buf.push(',');
        }
        write_str(&mut self.buf, key);
        self.buf.push(':');
        &mut self.buf
    }

    pub fn str(mut self, key: &str, value: &str) -> Self {
        write_str(self.key(key), value);
        self
    }

    /// A string, or `null` for `None`.
    pub fn opt_str(mut self, key: &str, value: Option<&str>) -> Self {
        match value {
            Some(v) => write_str(self.key(key), v),
            None => self.key(key).push_str("null"),
        }
        self
    }

    pub fn bool(mut self, key: &str, value: bool) -> Self {
        self.key(key).push_str(if value { "true" } else { "false" });
        self
    }

    pub fn u64(mut self, key: &str, value: u64) -> Self {
        let s = value.to_string();
        self.key(key).push_str(&s);
        self
    }

    /// An integer, or `null` for `None`.
    pub fn opt_i64(mut self, key: &str, value: Option<i64>) -> Self {
        let s = match value {
            Some(v) => v.to_string(),
            None => "null".to_string(),
        };
        self.key(key).push_str(&s);
        self
    }

    pub fn str_array<S: AsRef<str>>(mut self, key: &str, values: &[S]) -> Self {
        let out = self.key(key);
        out.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_str(out, v.as_ref());
        }
        out.push(']');
        self
    }

    /// An array of objects.
    pub fn objects(mut self, key: &str, values: Vec<Object>) -> Self {
        let out = self.key(key);
        out.push('[');
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&v.finish());
        }
        out.push(']');
        self
    }

    pub fn object(mut self, key: &str, value: Object) -> Self {
        let s = value.finish();
        self.key(key).push_str(&s);
        self
    }

    /// Each (key, object) in turn, as fields of this object.
    pub fn objects_by_key(self, fields: Vec<(&str, Object)>) -> Self {
        fields.into_iter().fold(self, |o, (key, value)| o.object(key, value))
    }

    pub fn finish(mut self) -> String {
        self.buf.push('}');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_quotes_backslashes_and_controls() {
        assert_eq!(string("plain"), r#""plain""#);
        assert_eq!(string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(string("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(string("\u{8}\u{c}"), r#""\b\f""#);
        assert_eq!(string("\u{0}\u{1f}\u{7f}"), r#""\u0000\u001f\u007f""#);
        assert_eq!(string("\u{2028}\u{2029}"), r#""\u2028\u2029""#);
    }

    #[test]
    fn keeps_non_ascii_text() {
        assert_eq!(string("häß ✓ 𝄞"), "\"häß ✓ 𝄞\"");
    }

    #[test]
    fn escapes_keys_too() {
        let s = Object::new().u64("a\"b", 1).finish();
        assert_eq!(s, r#"{"a\"b":1}"#);
    }

    #[test]
    fn builds_nested_objects_and_arrays() {
        let inner = Object::new().u64("x", 1).u64("y", 18446744073709551615);
        let s = Object::new()
            .str("s", "v")
            .opt_str("none", None)
            .opt_str("some", Some("q\""))
            .bool("t", true)
            .bool("f", false)
            .opt_i64("e", Some(-30))
            .opt_i64("n", None)
            .str_array("a", &["x", "y\\"])
            .str_array::<&str>("empty", &[])
            .object("o", inner)
            .object("eo", Object::new())
            .objects("ao", vec![Object::new().u64("i", 1), Object::new()])
            .objects("eao", Vec::new())
            .finish();
        assert_eq!(
            s,
            r#"{"s":"v","none":null,"some":"q\"","t":true,"f":false,"e":-30,"n":null,"a":["x","y\\"],"empty":[],"o":{"x":1,"y":18446744073709551615},"eo":{},"ao":[{"i":1},{}],"eao":[]}"#
        );
    }

    #[test]
    fn empty_object() {
        assert_eq!(Object::new().finish(), "{}");
    }
}
