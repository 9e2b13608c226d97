//! Diagnostics: one problem found in a pipeline file (or in a gst-launch fragment it holds),
//! rendered as `file:line:column` with the source line, a caret and a "did you mean".

use std::ops::Range;

/// One problem found in a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the file the problem points at.
    pub span: Range<usize>,
    /// `sources.cam`, `server`, ... when the problem belongs to one component.
    pub component: Option<String>,
    /// The key within the component, when the problem is about one key.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// A suggestion, e.g. `did you mean "bitrate"?`.
    pub help: Option<String>,
}

impl Diagnostic {
    /// Renders the diagnostic as `file:line:column: error: ...` followed by the source line
    /// with a caret under the culprit and the suggestion, if any.
    pub fn render(&self, file: &str, text: &str) -> String {
        let (line, column) = line_column(text, self.span.start);
        let mut out = format!("{file}:{line}:{column}: error: ");
        match (&self.component, &self.key) {
            (Some(c), Some(k)) => out.push_str(&format!("{c}: `{k}`: ")),
            (Some(c), None) => out.push_str(&format!("{c}: ")),
            (None, Some(k)) => out.push_str(&format!("`{k}`: ")),
            (None, None) => {}
        }
        out.push_str(&self.message);
        if let Some(source_line) = text.lines().nth(line - 1) {
            let width = self
                .span
                .len()
                .clamp(1, source_line.len().saturating_sub(column - 1).max(1));
            out.push_str(&format!(
                "\n  {line:>4} | {source_line}\n       | {}{}",
                " ".repeat(column - 1),
                "^".repeat(width)
            ));
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("\n       = help: {help}"));
        }
        out
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The closest candidate to `name`, if it is close enough to be a likely typo.
pub fn suggest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    // Edit distance catches short swaps (`cma` → `cam`) that Jaro-Winkler misses; Jaro-Winkler
    // catches long names with a wrong tail.
    candidates
        .into_iter()
        .map(|c| {
            let edits = strsim::normalized_damerau_levenshtein(name, c);
            let jw = strsim::jaro_winkler(name, c);
            (edits >= 0.6 || jw >= 0.85, edits + jw, c)
        })
        .filter(|(close, _, _)| *close)
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(_, _, c)| format!("did you mean `{c}`?"))
}
