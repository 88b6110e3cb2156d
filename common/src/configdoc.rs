//! The configuration reference: every key of a configuration file with its default and its
//! meaning — the doc comment of the field — rendered from the configuration type itself, so the
//! table in `docs/configuration.md` cannot drift from the code (each binary's tests compare it,
//! and `generate-docs --config-doc FILE` rewrites it).

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// One key of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyDoc {
    /// Dotted, as in TOML: `health.url`.
    pub key: String,
    /// The default, as TOML would spell it, or `none`.
    pub default: String,
    /// The field's doc comment, on one line.
    pub meaning: String,
}

/// Every key of `T`, nested tables flattened (`health.url`), with its value in `defaults`, in
/// the order of their dotted names.
pub fn keys<T: JsonSchema + Serialize>(defaults: &T) -> Vec<KeyDoc> {
    let schema = serde_json::to_value(schemars::schema_for!(T)).expect("a schema serialises");
    let values = serde_json::to_value(defaults).expect("a configuration serialises");
    let mut out = Vec::new();
    walk(&schema, &schema, &values, "", &mut out);
    out
}

fn walk(root: &Value, schema: &Value, values: &Value, prefix: &str, out: &mut Vec<KeyDoc>) {
    let Some(properties) = resolve(root, schema)
        .get("properties")
        .and_then(Value::as_object)
    else {
        return;
    };
    for (name, field) in properties {
        let key = format!("{prefix}{name}");
        let value = values.get(name).unwrap_or(&Value::Null);
        let target = resolve(root, field);
        if target.get("properties").is_some() {
            walk(root, target, value, &format!("{key}."), out);
            continue;
        }
        let meaning = field
            .get("description")
            .or_else(|| target.get("description"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        out.push(KeyDoc {
            key,
            default: toml_value(value),
            meaning: one_line(meaning),
        });
    }
}

/// The schema a `$ref` names (only `#/$defs/…` ones, which is what `schema_for!` writes).
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
    {
        Some(name) => root
            .get("$defs")
            .and_then(|d| d.get(name))
            .unwrap_or(schema),
        None => schema,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A JSON value as TOML writes it inline; `none` for an absent optional value.
fn toml_value(v: &Value) -> String {
    fn inline(v: &Value) -> String {
        match v {
            Value::Null => "none".into(),
            Value::String(s) => format!("{s:?}"),
            Value::Array(items) => {
                let items: Vec<String> = items.iter().map(inline).collect();
                format!("[{}]", items.join(", "))
            }
            Value::Object(map) => {
                let items: Vec<String> = map
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| format!("{k:?} = {}", inline(v)))
                    .collect();
                format!("{{ {} }}", items.join(", "))
            }
            other => other.to_string(),
        }
    }
    match v {
        Value::Null => "none".into(),
        v => inline(v),
    }
}

/// The keys as a Markdown table: key, default, meaning.
pub fn table(keys: &[KeyDoc]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for k in keys {
        out.push_str(&format!(
            "| `{}` | `{}` | {} |\n",
            k.key,
            cell(&k.default),
            cell(&k.meaning)
        ));
    }
    out
}

/// The markers around a generated section of a document.
fn markers(section: &str) -> (String, String) {
    (
        format!("<!-- {section}: generated, do not edit -->\n"),
        format!("<!-- end of {section} -->"),
    )
}

/// `doc` with the text between `section`'s markers replaced by `body`; `None` when the markers
/// are not there.
pub fn replace_section(doc: &str, section: &str, body: &str) -> Option<String> {
    let (start, end) = markers(section);
    let from = doc.find(&start)? + start.len();
    let to = from + doc[from..].find(&end)?;
    Some(format!("{}{body}{}", &doc[..from], &doc[to..]))
}

/// The text between `section`'s markers in `doc`.
pub fn section<'a>(doc: &'a str, section: &str) -> Option<&'a str> {
    let (start, end) = markers(section);
    let from = doc.find(&start)? + start.len();
    let to = from + doc[from..].find(&end)?;
    Some(&doc[from..to])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A configuration.
    #[derive(Serialize, JsonSchema)]
    struct Example {
        /// Where it lives: an absolute
        /// path.
        root: String,
        /// Optional | with a pipe.
        store: Option<String>,
        /// Nested.
        health: Health,
        /// A map.
        shared: BTreeMap<String, String>,
    }

    #[derive(Serialize, JsonSchema)]
    struct Health {
        /// Seconds.
        timeout: u64,
        /// Argv.
        argv: Vec<String>,
    }

    #[test]
    fn keys_are_flattened_with_defaults_and_doc_comments() {
        let ex = Example {
            root: "/srv".into(),
            store: None,
            health: Health {
                timeout: 60,
                argv: vec!["a".into(), "b c".into()],
            },
            shared: [("x/y".to_owned(), "y".to_owned())].into(),
        };
        let got = keys(&ex);
        let rows: Vec<(&str, &str, &str)> = got
            .iter()
            .map(|k| (k.key.as_str(), k.default.as_str(), k.meaning.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("health.argv", "[\"a\", \"b c\"]", "Argv."),
                ("health.timeout", "60", "Seconds."),
                ("root", "\"/srv\"", "Where it lives: an absolute path."),
                ("shared", "{ \"x/y\" = \"y\" }", "A map."),
                ("store", "none", "Optional | with a pipe."),
            ]
        );
        let t = table(&got);
        assert!(
            t.contains("| `store` | `none` | Optional \\| with a pipe. |"),
            "{t}"
        );
        let doc =
            "intro\n<!-- keys: generated, do not edit -->\nold\n<!-- end of keys -->\nafter\n";
        let new = replace_section(doc, "keys", "new\n").unwrap();
        assert_eq!(
            new,
            "intro\n<!-- keys: generated, do not edit -->\nnew\n<!-- end of keys -->\nafter\n"
        );
        assert_eq!(section(&new, "keys"), Some("new\n"));
        assert_eq!(replace_section("no markers", "keys", "x"), None);
    }
}
