//! `[outputs.NAME]`: where the encoded media goes. Each output kind reads its own table in its
//! own file; this reads `type` and hands the table to that kind through [`OutputKinds`],
//! which the caller of [`super::parse`] provides (the registry of the `output` module), so that
//! the config does not depend on the kinds that depend on it.

use super::diagnostics::Diagnostic;
use super::model::{Output, OutputSpec};
use super::reader::Fields;

const PLANNED_OUTPUT_TYPES: &[&str] = &[];

/// The output kinds a pipeline file may name, and how each reads its table.
pub(crate) trait OutputKinds {
    /// The `type` names, in the order messages list them.
    fn type_names(&self) -> Vec<&'static str>;
    /// The `type` names of the kinds an abrcontroller can steer.
    fn steerable_type_names(&self) -> Vec<&'static str>;
    /// Reads and validates the table of an output of `type_name` (`type` and `inputs`
    /// aside); `None` when it cannot be read at all.
    fn parse(
        &self,
        type_name: &str,
        diags: &mut Vec<Diagnostic>,
        f: &mut Fields,
    ) -> Option<Box<dyn OutputSpec>>;
}

/// Reads one `[outputs.NAME]` table; its `inputs` are read (and later checked) by the caller.
pub(super) fn output(
    kinds: &dyn OutputKinds,
    diags: &mut Vec<Diagnostic>,
    f: &mut Fields,
    name: &str,
) -> Option<Output> {
    let kind = f.component_type(diags, &kinds.type_names(), PLANNED_OUTPUT_TYPES)?;
    let kind = kinds.parse(&kind, diags, f)?;
    Some(Output {
        name: name.to_string(),
        inputs: Vec::new(),
        kind,
    })
}
