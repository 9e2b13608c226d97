//! `[outputs.NAME]`: where the encoded media goes. Each output kind reads its own table in its
//! own file under `crate::output`; this reads `type` and hands the table to that kind.

use super::diagnostics::Diagnostic;
use super::model::Output;
use super::reader::Fields;

const PLANNED_OUTPUT_TYPES: &[&str] = &[];

/// Reads one `[outputs.NAME]` table; its `inputs` are read (and later checked) by the caller.
pub(super) fn output(diags: &mut Vec<Diagnostic>, f: &mut Fields, name: &str) -> Option<Output> {
    let kind = f.component_type(diags, &crate::output::type_names(), PLANNED_OUTPUT_TYPES)?;
    let kind = crate::output::factory(&kind)?.parse(diags, f)?;
    Some(Output {
        name: name.to_string(),
        inputs: Vec::new(),
        kind,
    })
}
