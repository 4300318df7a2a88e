//! Jinja chat templates, rendered as transformers' `apply_chat_template` does
//! (transformers/utils/chat_template_utils.py `_compile_jinja_template`):
//! `trim_blocks` + `lstrip_blocks`, loop controls, Python string/dict methods (`.strip()`,
//! `.startswith()`, `.items()`... via minijinja-contrib's pycompat), a `tojson` filter that writes
//! what Python's `json.dumps(ensure_ascii=False)` writes, and the globals `raise_exception(msg)` and
//! `strftime_now(format)`. Variables: `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, `tools` and `documents` (none unless given), plus any extra the caller passes.

use std::collections::BTreeMap;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use super::strftime::DateTime;
use crate::{Error, Result};

const NAME: &str = "chat_template";

/// One chat turn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the model's BOS/EOS strings.
pub struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_len", &self.source.len())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

fn template_err(e: minijinja::Error) -> Error {
    // `{:#}` adds minijinja's source excerpt; the message itself is enough for a user.
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    Error::Template(msg)
}

impl ChatTemplate {
    /// Compile `source`; a syntax error is an [`Error::Template`].
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |fmt: String| {
            DateTime::now_utc().format(&fmt)
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(template_err)?;
        Ok(Self {
            source: source.to_string(),
            env,
            bos_token: bos_token.map(str::to_string),
            eos_token: eos_token.map(str::to_string),
        })
    }

    /// The template text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Render `messages`; `add_generation_prompt` opens an assistant turn at the end.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &Map::new())
    }

    /// Render any serialisable message list (e.g. with `tool_calls`), with extra variables
    /// (`tools`, `date_string`, `documents`...) that override the defaults.
    pub fn render_with<M: Serialize + ?Sized>(
        &self,
        messages: &M,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> Result<String> {
        let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        // transformers passes tools=None and documents=None when not given.
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        if let Some(b) = &self.bos_token {
            ctx.insert("bos_token".into(), Value::from(b.as_str()));
        }
        if let Some(e) = &self.eos_token {
            ctx.insert("eos_token".into(), Value::from(e.as_str()));
        }
        for (k, v) in extra {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        let tmpl = self.env.get_template(NAME).map_err(template_err)?;
        tmpl.render(ctx).map_err(template_err)
    }
}

/// `raise_exception(msg)`: templates call it to refuse a conversation (e.g. roles out of order).
fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("raise_exception: {msg}"),
    ))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`:
/// `json.dumps` output, not minijinja's HTML-safe one (which escapes `<`, `>`, `&`, `'`).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    minijinja::Error::new(ErrorKind::InvalidOperation, "tojson: bad indent")
                })?;
                Some(" ".repeat(n.max(0) as usize))
            }
        },
    };
    let opts = JsonOpts {
        indent,
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    opts.write(&value, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    indent: Option<String>,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonOpts {
    fn string(&self, s: &str, out: &mut String) {
        let quoted = serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        if !self.ensure_ascii {
            out.push_str(&quoted);
            return;
        }
        for c in quoted.chars() {
            if c.is_ascii() {
                out.push(c);
            } else {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }

    /// Newline and indentation before an item at `level`, as json.dumps with `indent`.
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    }

    fn write(
        &self,
        v: &Value,
        level: usize,
        out: &mut String,
    ) -> std::result::Result<(), minijinja::Error> {
        // Python: ", " and ": " without indent, "," and ": " with it.
        let item_sep = if self.indent.is_some() { "," } else { ", " };
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => {
                let n = serde_json::to_string(v).map_err(|e| {
                    minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}"))
                })?;
                out.push_str(&n);
            }
            ValueKind::String => self.string(v.as_str().unwrap_or_default(), out),
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    self.newline(level + 1, out);
                    // json.dumps turns non-string keys into strings.
                    match k.as_str() {
                        Some(s) => self.string(s, out),
                        None => self.string(&k.to_string(), out),
                    }
                    out.push_str(": ");
                    self.write(&v.get_item(k)?, level + 1, out)?;
                }
                self.newline(level, out);
                out.push('}');
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(item_sep);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push(']');
            }
            _ => self.string(&v.to_string(), out),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(src: &str, extra: Json) -> Result<String> {
        let t = ChatTemplate::new(src, Some("<s>"), Some("</s>"))?;
        let extra = extra.as_object().cloned().unwrap_or_default();
        t.render_with(&[Message::new("user", " hi ")], true, &extra)
    }

    #[test]
    fn python_methods_and_trim() {
        let src = "{% for m in messages %}\n  {{ m.content.strip() }}|{{ m.role.startswith('us') }}\n{% endfor %}";
        assert_eq!(render(src, Json::Null).unwrap(), "  hi|True\n");
    }

    #[test]
    fn tojson_like_python() {
        let src = "{{ x | tojson }}|{{ x | tojson(indent=2) }}|{{ 'a<b>é' | tojson }}|{{ [] | tojson(indent=2) }}";
        let extra = serde_json::json!({"x": {"a": [1, 2.5, null], "b": true}});
        assert_eq!(
            render(src, extra).unwrap(),
            "{\"a\": [1, 2.5, null], \"b\": true}|{\n  \"a\": [\n    1,\n    2.5,\n    null\n  ],\n  \"b\": true\n}|\"a<b>é\"|[]"
        );
        let src = "{{ 'é' | tojson(ensure_ascii=true) }}";
        assert_eq!(render(src, Json::Null).unwrap(), "\"\\u00e9\"");
    }

    #[test]
    fn raise_exception_is_template_error() {
        let err = render("{{ raise_exception('Roles must alternate') }}", Json::Null).unwrap_err();
        assert!(matches!(err, Error::Template(_)));
        assert!(err.to_string().contains("Roles must alternate"), "{err}");
    }

    #[test]
    fn syntax_error_is_template_error() {
        let err = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err();
        assert!(matches!(err, Error::Template(_)), "{err}");
    }

    #[test]
    fn defaults_and_strftime() {
        let src = "{{ bos_token }}{{ tools is none }}{{ add_generation_prompt }}{{ strftime_now('%Y') | length }}";
        assert_eq!(render(src, Json::Null).unwrap(), "<s>TrueTrue4");
    }
}
