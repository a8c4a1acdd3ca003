//! A small reader of the block-style YAML a CloudFormation template is written in: enough to take
//! values out of `deploy/capacity-alarms.yaml` (no YAML crate is a dependency).
//!
//! Handles nested block mappings, block sequences (also of mappings), quoted and plain scalars,
//! block scalars (`|`, `>-`…, kept as text) and comments. A short-form tag (`!Ref X`,
//! `!Sub "…"`) stays part of the scalar's text: [`Template::resolve`] reads the two forms the
//! scaling resources use. Flow collections (`[a, b]`) stay plain text.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Scalar(String),
    Map(Vec<(String, Node)>),
    List(Vec<Node>),
}

impl Node {
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// `a.b.c` through nested mappings.
    pub fn path(&self, dotted: &str) -> Option<&Node> {
        dotted.split('.').try_fold(self, |n, k| n.get(k))
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_list(&self) -> &[Node] {
        match self {
            Node::List(items) => items,
            _ => &[],
        }
    }
}

struct Line {
    indent: usize,
    text: String,
}

fn strip_comment(text: &str) -> &str {
    let mut quote = None;
    for (i, ch) in text.char_indices() {
        match (quote, ch) {
            (None, '"' | '\'') => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if i == 0 || text[..i].ends_with(' ') => return text[..i].trim_end(),
            _ => {}
        }
    }
    text.trim_end()
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')))
    {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

/// `key: value` → (key, value); `key:` → (key, "").
fn split_key(text: &str) -> Option<(String, &str)> {
    if let Some(key) = text.strip_suffix(':') {
        return Some((unquote(key), ""));
    }
    let (key, rest) = text.split_once(": ")?;
    if key.starts_with('"') || key.contains(' ') && !key.starts_with('\'') {
        return None;
    }
    Some((unquote(key), rest.trim()))
}

pub fn parse(text: &str) -> Node {
    let mut lines = Vec::new();
    let raw: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < raw.len() {
        let line = raw[i];
        let indent = line.len() - line.trim_start().len();
        let body = strip_comment(line.trim_start());
        i += 1;
        if body.is_empty() {
            continue;
        }
        // A block scalar: its lines (deeper than the key) are joined into the value.
        let value = body.split_once(": ").map(|(_, v)| v.trim()).unwrap_or("");
        // `|`, `>-`…, possibly after a tag (`!Sub |`).
        let indicator = value.rsplit(' ').next().unwrap_or("");
        if matches!(indicator, "|" | "|-" | ">" | ">-") {
            let mut block = Vec::new();
            while i < raw.len() {
                let l = raw[i];
                let l_indent = l.len() - l.trim_start().len();
                if !l.trim().is_empty() && l_indent <= indent {
                    break;
                }
                block.push(l.trim());
                i += 1;
            }
            let key = body.split_once(": ").map(|(k, _)| k).unwrap_or(body);
            lines.push(Line {
                indent,
                text: format!("{key}: {}", quote_block(&block.join("\n"))),
            });
            continue;
        }
        lines.push(Line {
            indent,
            text: body.to_string(),
        });
    }
    let mut at = 0;
    block(&mut lines, &mut at)
}

/// A block scalar's text as one line the scalar reader gives back unchanged.
fn quote_block(text: &str) -> String {
    format!("\u{1}{}", text.replace('\n', "\u{2}"))
}

fn scalar(text: &str) -> Node {
    match text.strip_prefix('\u{1}') {
        Some(block) => Node::Scalar(block.replace('\u{2}', "\n")),
        None => Node::Scalar(unquote(text)),
    }
}

fn block(lines: &mut [Line], at: &mut usize) -> Node {
    let Some(first) = lines.get(*at) else {
        return Node::Map(Vec::new());
    };
    let indent = first.indent;
    if first.text == "-" || first.text.starts_with("- ") {
        let mut items = Vec::new();
        while *at < lines.len()
            && lines[*at].indent == indent
            && (lines[*at].text == "-" || lines[*at].text.starts_with("- "))
        {
            let rest = lines[*at].text[1..].trim_start().to_string();
            if rest.is_empty() {
                *at += 1;
                items.push(block(lines, at));
            } else if split_key(&rest).is_some() {
                // A mapping that starts on the item's line: read it as if indented past the dash.
                lines[*at].indent = indent + 2;
                lines[*at].text = rest;
                items.push(block(lines, at));
            } else {
                *at += 1;
                items.push(scalar(&rest));
            }
        }
        return Node::List(items);
    }
    let mut entries = Vec::new();
    while *at < lines.len() && lines[*at].indent == indent {
        let Some((key, value)) = split_key(&lines[*at].text) else {
            *at += 1;
            continue;
        };
        let value = value.to_string();
        *at += 1;
        let node = if !value.is_empty() {
            scalar(&value)
        } else if *at < lines.len()
            && (lines[*at].indent > indent
                || (lines[*at].indent == indent && lines[*at].text.starts_with("- ")))
        {
            block(lines, at)
        } else {
            Node::Scalar(String::new())
        };
        entries.push((key, node));
    }
    Node::Map(entries)
}

/// A template with its parameters' defaults.
pub struct Template {
    pub root: Node,
    pub defaults: BTreeMap<String, String>,
}

impl Template {
    pub fn read(path: &std::path::Path) -> Template {
        let text =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let root = parse(&text);
        let mut defaults = BTreeMap::new();
        if let Some(Node::Map(params)) = root.get("Parameters") {
            for (name, p) in params {
                if let Some(d) = p.get("Default").and_then(Node::as_str) {
                    defaults.insert(name.clone(), d.to_string());
                }
            }
        }
        Template { root, defaults }
    }

    pub fn resource(&self, name: &str) -> &Node {
        self.root
            .path(&format!("Resources.{name}.Properties"))
            .unwrap_or_else(|| panic!("template: no resource {name} with Properties"))
    }

    /// A value with `!Ref Param` and `!Sub "…${Param}…"` replaced by the parameters' defaults.
    pub fn resolve(&self, node: &Node) -> String {
        let text = node
            .as_str()
            .unwrap_or_else(|| panic!("not a scalar: {node:?}"));
        if let Some(name) = text.strip_prefix("!Ref ") {
            return self
                .defaults
                .get(name.trim())
                .unwrap_or_else(|| panic!("!Ref {name}: no such parameter with a default"))
                .clone();
        }
        if let Some(body) = text.strip_prefix("!Sub ") {
            let mut out = unquote(body);
            for (name, value) in &self.defaults {
                out = out.replace(&format!("${{{name}}}"), value);
            }
            return out;
        }
        text.to_string()
    }

    /// `resolve` of `Resources.<name>.Properties.<key>` as a number.
    pub fn number(&self, resource: &str, key: &str) -> f64 {
        let node = self
            .resource(resource)
            .path(key)
            .unwrap_or_else(|| panic!("template: {resource} has no {key}"));
        let text = self.resolve(node);
        text.parse()
            .unwrap_or_else(|e| panic!("template: {resource}.{key} = {text:?}: {e}"))
    }

    pub fn text(&self, resource: &str, key: &str) -> String {
        let node = self
            .resource(resource)
            .path(key)
            .unwrap_or_else(|| panic!("template: {resource} has no {key}"));
        self.resolve(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cfn_reader_reads_maps_lists_tags_and_block_scalars() {
        let t = parse(
            "A:\n  S: !Sub |\n    {\n      \"k\": 1\n    }\n  B: 1 # one\n  C: !Ref X\n  L:\n    - Name: n\n      Value: v\n    - !Ref Y\n  D: |\n    {\"a\": \"#b\"}\n    x\n  E: \"q: #\"\n",
        );
        assert_eq!(t.path("A.B").and_then(Node::as_str), Some("1"));
        assert_eq!(t.path("A.S").and_then(Node::as_str), Some("{\n\"k\": 1\n}"));
        assert_eq!(t.path("A.C").and_then(Node::as_str), Some("!Ref X"));
        let l = t.path("A.L").unwrap().as_list();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].get("Value").and_then(Node::as_str), Some("v"));
        assert_eq!(l[1].as_str(), Some("!Ref Y"));
        assert_eq!(
            t.path("A.D").and_then(Node::as_str),
            Some("{\"a\": \"#b\"}\nx")
        );
        assert_eq!(t.path("A.E").and_then(Node::as_str), Some("q: #"));
    }
}
