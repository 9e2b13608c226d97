//! The typed field reader: the keys of one TOML table read one by one, each mistake reported
//! as a [`Diagnostic`] on the key or value it is about, and every key left unread reported as
//! unknown with the closest known one.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};

use super::diagnostics::{Diagnostic, suggest};
use super::model::Framerate;

pub(crate) type Spanned<T> = toml::Spanned<T>;

/// Reads the component sections of one file, collecting every problem.
pub(crate) struct Reader<'d> {
    pub(crate) diags: &'d mut Vec<Diagnostic>,
    /// The folder relative paths in the file are read from: the pipeline file's own.
    pub(crate) base: &'d Path,
    /// Components declared but unreadable: already reported, so inputs naming them are not.
    pub(crate) broken: BTreeSet<String>,
}

impl Reader<'_> {
    /// Reads every `[section.NAME]` table with `read`, after its `inputs` (except for
    /// sources); a table `read` refuses is remembered in `broken`.
    pub(crate) fn section<T>(
        &mut self,
        document: &DeTable,
        section: &str,
        mut read: impl FnMut(&mut Vec<Diagnostic>, &mut Fields, &str) -> Option<T>,
    ) -> Vec<Named<T>> {
        let Some(DeValue::Table(components)) = document.get(section).map(|v| v.get_ref()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in components.iter() {
            let name: &str = key.get_ref();
            let component = format!("{section}.{name}");
            let DeValue::Table(table) = value.get_ref() else {
                self.diags.push(Diagnostic {
                    span: value.span(),
                    component: Some(component),
                    key: None,
                    message: format!(
                        "expected a table `[{section}.{name}]`, found {}",
                        type_name(value.get_ref())
                    ),
                    help: None,
                });
                continue;
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                self.diags.push(Diagnostic {
                    span: key.span(),
                    component: Some(component.clone()),
                    key: None,
                    message: "component names use letters, digits, `_` and `-` only".into(),
                    help: None,
                });
            }
            let mut fields = Fields::new(table, Some(component), key.span());
            fields.base = self.base.to_path_buf();
            let inputs = if section == "sources" {
                Vec::new()
            } else {
                fields.string_list(self.diags, "inputs")
            };
            let read = read(self.diags, &mut fields, name);
            fields.finish(self.diags);
            match read {
                Some(value) => out.push(Named {
                    value,
                    span: key.span(),
                    inputs,
                }),
                None => {
                    self.broken.insert(name.to_string());
                }
            }
        }
        out
    }
}

/// "`text` is not WHAT", and where it was looked for when that is not the text itself (a
/// path relative to the pipeline file's folder).
pub(crate) fn not_a(path: &Path, text: &str, what: &str) -> String {
    if path == Path::new(text) {
        format!("`{text}` is not {what}")
    } else {
        format!("`{text}` is not {what} (looked for {})", path.display())
    }
}

/// The keys of one table, read one by one; whatever is left unread at the end is unknown.
pub(crate) struct Fields<'t, 'i> {
    pub(crate) table: &'t DeTable<'i>,
    pub(crate) component: Option<String>,
    pub(crate) header: Range<usize>,
    pub(crate) known: Vec<&'static str>,
    /// The folder relative paths are read from (empty: the working directory).
    pub(crate) base: PathBuf,
}

impl<'t, 'i> Fields<'t, 'i> {
    pub(crate) fn new(
        table: &'t DeTable<'i>,
        component: Option<String>,
        header: Range<usize>,
    ) -> Self {
        Fields {
            table,
            component,
            header,
            known: Vec::new(),
            base: PathBuf::new(),
        }
    }

    pub(crate) fn entry(&mut self, key: &'static str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.known.push(key);
        self.table.get(key)
    }

    pub(crate) fn error(
        &self,
        diags: &mut Vec<Diagnostic>,
        span: Range<usize>,
        key: &str,
        message: String,
    ) {
        diags.push(Diagnostic {
            span,
            component: self.component.clone(),
            key: Some(key.to_string()),
            message,
            help: None,
        });
    }

    pub(crate) fn type_error(
        &self,
        diags: &mut Vec<Diagnostic>,
        value: &Spanned<DeValue>,
        key: &str,
        want: &str,
    ) {
        let got = type_name(value.get_ref());
        self.error(
            diags,
            value.span(),
            key,
            format!("expected {want}, found {got}"),
        );
    }

    /// The value of `key` as `convert` reads it, with the value itself for its span; `None`
    /// when the key is absent, or when `convert` refuses it, which is reported as not `want`.
    fn typed<T>(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        want: &str,
        convert: impl FnOnce(&'t DeValue<'i>) -> Option<T>,
    ) -> Option<(T, &'t Spanned<DeValue<'i>>)> {
        let value = self.entry(key)?;
        let Some(converted) = convert(value.get_ref()) else {
            self.type_error(diags, value, key, want);
            return None;
        };
        Some((converted, value))
    }

    pub(crate) fn string(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
    ) -> Option<(String, Range<usize>)> {
        let (s, value) = self.typed(diags, key, "a string", DeValue::as_str)?;
        Some((s.to_string(), value.span()))
    }

    /// A path, relative ones read from the pipeline file's folder (as every config format
    /// users know does), with the text as written for messages.
    pub(crate) fn path(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
    ) -> Option<(PathBuf, String, Range<usize>)> {
        let (text, span) = self.string(diags, key)?;
        Some((self.base.join(&text), text, span))
    }

    pub(crate) fn required_string(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
    ) -> Option<(String, Range<usize>)> {
        let present = self.table.contains_key(key);
        let value = self.string(diags, key);
        if !present {
            self.error(
                diags,
                self.header.clone(),
                key,
                "missing required key".into(),
            );
        }
        value
    }

    /// A required URL whose scheme is one of `schemes`; otherwise the error says the value
    /// "is not {what}". The value is returned either way (every mistake is reported).
    pub(crate) fn required_url(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        schemes: &[&str],
        what: &str,
    ) -> Option<String> {
        let (url, span) = self.required_string(diags, key)?;
        if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
            self.error(diags, span, key, format!("`{url}` is not {what}"));
        }
        Some(url)
    }

    pub(crate) fn bool(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        default: bool,
    ) -> bool {
        self.typed(diags, key, "true or false", DeValue::as_bool)
            .map_or(default, |(b, _)| b)
    }

    pub(crate) fn integer(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        range: Range<i64>,
        default: u32,
    ) -> u32 {
        let Some((int, value)) = self.typed(diags, key, "an integer", DeValue::as_integer) else {
            return default;
        };
        let digits = int.as_str().replace('_', "");
        match i64::from_str_radix(&digits, int.radix()) {
            Ok(n) if range.contains(&n) => n as u32,
            _ => {
                let message = format!(
                    "{} is out of range: expected {}..={}",
                    int.as_str(),
                    range.start,
                    range.end - 1
                );
                self.error(diags, value.span(), key, message);
                default
            }
        }
    }

    /// A frame rate: an integer (with [`Fields::integer`]'s range check), a decimal such as
    /// `29.97` or a fraction such as `"30000/1001"` (see [`Framerate::parse`]).
    pub(crate) fn framerate(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        default: Framerate,
    ) -> Framerate {
        let max = i64::from(Framerate::MAX_FPS);
        match self.table.get(key).map(|v| v.get_ref()) {
            None => {
                self.known.push(key);
                default
            }
            Some(DeValue::Integer(_)) => {
                Framerate::whole(self.integer(diags, key, 1..max + 1, default.numerator))
            }
            Some(_) => {
                let text = |v: &DeValue| match v {
                    DeValue::Float(f) => Some(f.as_str().replace('_', "")),
                    DeValue::String(s) => Some(s.to_string()),
                    _ => None,
                };
                let want = "a frame rate (30, 29.97 or \"30000/1001\")";
                let Some((text, value)) = self.typed(diags, key, want, text) else {
                    return default;
                };
                Framerate::parse(&text).unwrap_or_else(|| {
                    let message = format!(
                        "`{text}` is not a frame rate from 1 to {max} fps: give an integer, a \
                         decimal such as 29.97 or a fraction such as \"30000/1001\""
                    );
                    self.error(diags, value.span(), key, message);
                    default
                })
            }
        }
    }

    /// [`Fields::integer`] for a picture dimension: H.264/H.265 encode 4:2:0 video, whose
    /// chroma planes are half the size, so an odd width or height validates here instead of
    /// failing in the encoder once the run has started.
    pub(crate) fn even_integer(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        range: Range<i64>,
        default: u32,
    ) -> u32 {
        let n = self.integer(diags, key, range, default);
        if n % 2 == 1
            && let Some(value) = self.table.get(key)
        {
            let message = format!(
                "{n} is odd: 4:2:0 video (H.264, H.265) needs an even {key}, e.g. {} or {}",
                n - 1,
                n + 1
            );
            self.error(diags, value.span(), key, message);
            return default;
        }
        n
    }

    pub(crate) fn number(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        min: f64,
        max: f64,
        default: f64,
    ) -> f64 {
        let digits = |v: &DeValue| match v {
            DeValue::Float(f) => Some(f.as_str().replace('_', "")),
            DeValue::Integer(i) => Some(i.as_str().replace('_', "")),
            _ => None,
        };
        let Some((digits, value)) = self.typed(diags, key, "a number", digits) else {
            return default;
        };
        match digits.parse::<f64>() {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.error(
                    diags,
                    value.span(),
                    key,
                    format!("out of range: expected {min} to {max}"),
                );
                default
            }
        }
    }

    pub(crate) fn choice(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
        choices: &[&str],
        default: &str,
    ) -> String {
        let Some((value, span)) = self.string(diags, key) else {
            return default.to_string();
        };
        if choices.contains(&value.as_str()) {
            return value;
        }
        diags.push(Diagnostic {
            span,
            component: self.component.clone(),
            key: Some(key.to_string()),
            message: format!(
                "unknown value `{value}`: expected one of {}",
                choices.join(", ")
            ),
            help: suggest(&value, choices.iter().copied()),
        });
        default.to_string()
    }

    pub(crate) fn string_list(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        key: &'static str,
    ) -> Vec<(String, Range<usize>)> {
        let Some(value) = self.entry(key) else {
            self.error(
                diags,
                self.header.clone(),
                key,
                "missing required key".into(),
            );
            return Vec::new();
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.type_error(diags, value, key, "an array of component names");
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s.to_string(), item.span())),
                None => self.type_error(diags, item, key, "a component name (string)"),
            }
        }
        if out.is_empty() && items.is_empty() {
            self.error(
                diags,
                value.span(),
                key,
                "must name at least one component".into(),
            );
        }
        out
    }

    /// Reads the required `type` key: one of `types`, or a diagnostic (with a suggestion
    /// from `types` and `planned`).
    pub(crate) fn component_type(
        &mut self,
        diags: &mut Vec<Diagnostic>,
        types: &[&str],
        planned: &[&str],
    ) -> Option<String> {
        let (kind, span) = self.required_string(diags, "type")?;
        if types.contains(&kind.as_str()) {
            return Some(kind);
        }
        if planned.contains(&kind.as_str()) {
            self.error(
                diags,
                span,
                "type",
                format!(
                    "`{kind}` is not supported by this build yet (supported: {})",
                    types.join(", ")
                ),
            );
            return None;
        }
        diags.push(Diagnostic {
            span,
            component: self.component.clone(),
            key: Some("type".into()),
            message: format!(
                "unknown type `{kind}`: expected one of {}",
                types.join(", ")
            ),
            help: suggest(&kind, types.iter().chain(planned).copied()),
        });
        None
    }

    /// Reports every key that nothing asked for, with the closest known key.
    pub(crate) fn finish(self, diags: &mut Vec<Diagnostic>) {
        for (key, _) in self.table.iter() {
            let name: &str = key.get_ref();
            if !self.known.contains(&name) {
                diags.push(Diagnostic {
                    span: key.span(),
                    component: self.component.clone(),
                    key: Some(name.to_string()),
                    message: format!("unknown key (known keys: {})", self.known.join(", ")),
                    help: suggest(name, self.known.iter().copied()),
                });
            }
        }
    }
}

pub(crate) fn type_name(value: &DeValue) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A component before its inputs are checked: the name, its span and its resolved inputs.
pub(crate) struct Named<T> {
    pub(crate) value: T,
    pub(crate) span: Range<usize>,
    pub(crate) inputs: Vec<(String, Range<usize>)>,
}
