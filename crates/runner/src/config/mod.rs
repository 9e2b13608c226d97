//! The pipeline file: a TOML description of named components, read into [`Pipeline`].
//!
//! Like Vector's configuration, a file lists `sources`, `transforms`, `encoders` and `outputs`,
//! each a table named by the user, and every component that consumes something names its
//! `inputs`. Reading never stops at the first mistake: every problem is collected as a
//! [`Diagnostic`] that knows its byte span, component and key, so `validate` can print all of
//! them with file:line:column and a "did you mean" suggestion.
//!
//! The modules, each depending only on those listed before it:
//! - `diagnostics`: [`Diagnostic`], its rendering, [`line_column`] and [`suggest`];
//! - `model`: the types a file is read into ([`Pipeline`] and its parts);
//! - `reader`: the typed field reader (`Fields`) and the per-section loop;
//! - `fragment`: the escape-hatch gst-launch fragments (uses `diagnostics`);
//! - `server`, `latency_test`, `sources`, `transforms`, `encoders`: one section kind each,
//!   reading its tables with `reader` into `model`;
//! - `outputs`: reads an output's `type` and hands its table to that kind through
//!   `OutputKinds`, which the caller of [`parse`] passes in (the registry in
//!   the `output` module, whose kinds read their tables with `reader` into an [`OutputSpec`]):
//!   nothing here imports the output kinds, which import this;
//! - `graph`: the checks across components (inputs, media, codecs, loops, abrcontrollers);
//!   what a kind refuses it says through [`OutputSpec`];
//! - this module: [`parse`], which wires them together.

use std::collections::BTreeSet;
use std::ops::Range;

use toml::de::{DeTable, DeValue};

mod diagnostics;
mod encoders;
pub(crate) mod fragment;
mod graph;
mod latency_test;
mod model;
mod outputs;
pub(crate) mod reader;
mod server;
mod sources;
pub(crate) mod tls;
mod transforms;

pub use diagnostics::{Diagnostic, line_column, suggest};
pub use model::{
    AudioFormat, Encoder, EncoderKind, Fallback, Framerate, H264Preset, LatencyTest, Media, Output,
    OutputSpec, Pipeline, Refusal, RungSpec, Server, ServerTls, Source, SourceKind, Transform,
    TransformKind, VideoFormat, loopback_if_unbound,
};

pub(crate) use outputs::OutputKinds;
use reader::{Fields, Reader};

const SECTIONS: &[&str] = &[
    "server",
    "sources",
    "transforms",
    "encoders",
    "outputs",
    "latency_test",
];

/// Reads a pipeline file, its outputs read by `kinds` and its relative paths from `base` (the
/// file's folder; empty for the working directory). On failure, every problem found is
/// returned, in file order.
pub(crate) fn parse(
    text: &str,
    base: &std::path::Path,
    kinds: &dyn OutputKinds,
) -> Result<Pipeline, Vec<Diagnostic>> {
    let (document, syntax) = DeTable::parse_recoverable(text);
    let mut diags: Vec<Diagnostic> = syntax
        .iter()
        .map(|e| Diagnostic {
            span: e.span().unwrap_or(0..0),
            component: None,
            key: None,
            message: e.message().trim().to_string(),
            help: None,
        })
        .collect();
    if !diags.is_empty() {
        return Err(diags);
    }
    let document = document.into_inner();
    let mut reader = Reader {
        diags: &mut diags,
        base,
        broken: BTreeSet::new(),
    };
    let pipeline = pipeline(&mut reader, &document, kinds);
    if diags.is_empty() {
        Ok(pipeline)
    } else {
        diags.sort_by_key(|d| d.span.start);
        Err(diags)
    }
}

fn pipeline(reader: &mut Reader, document: &DeTable, kinds: &dyn OutputKinds) -> Pipeline {
    let root = Fields::new(document, None, 0..0);
    for (key, value) in document.iter() {
        let name: &str = key.get_ref();
        if !SECTIONS.contains(&name) {
            reader.diags.push(Diagnostic {
                span: key.span(),
                component: None,
                key: Some(name.to_string()),
                message: format!("unknown section (sections: {})", SECTIONS.join(", ")),
                help: suggest(name, SECTIONS.iter().copied()),
            });
        } else if !matches!(value.get_ref(), DeValue::Table(_)) {
            root.type_error(reader.diags, value, name, "a table");
        }
    }
    let server = server::read(reader.diags, document, reader.base);
    let sources = reader.section(document, "sources", sources::source);
    let transforms = reader.section(document, "transforms", transforms::transform);
    let encoders = reader.section(document, "encoders", encoders::encoder);
    let outputs = reader.section(document, "outputs", |diags, f, name| {
        outputs::output(kinds, diags, f, name)
    });
    let latency_test = latency_test::read(reader.diags, document);
    // A source table that is there but refused (an unknown `type`, ...) has its own error;
    // "no source" would only send the reader looking for a table they wrote.
    let source_tables = document
        .get("sources")
        .is_some_and(|s| matches!(s.get_ref(), DeValue::Table(t) if !t.is_empty()));
    if sources.is_empty()
        && !source_tables
        && !reader
            .diags
            .iter()
            .any(|d| d.key.as_deref() == Some("sources"))
    {
        reader.diags.push(Diagnostic {
            span: 0..0,
            component: None,
            key: Some("sources".into()),
            message: "the pipeline has no source: add a [sources.NAME] table".into(),
            help: Some("the smallest source is `[sources.cam]` with `type = \"test\"`".into()),
        });
    }
    graph::check(
        reader.diags,
        &reader.broken,
        &kinds.steerable_type_names(),
        &sources,
        &transforms,
        &encoders,
        &outputs,
    );
    Pipeline {
        server,
        sources: sources.into_iter().map(|n| n.value).collect(),
        transforms: transforms
            .into_iter()
            .map(|n| Transform {
                input: first_input(&n.inputs),
                ..n.value
            })
            .collect(),
        encoders: encoders
            .into_iter()
            .map(|n| Encoder {
                input: first_input(&n.inputs),
                ..n.value
            })
            .collect(),
        outputs: outputs
            .into_iter()
            .map(|n| Output {
                inputs: n.inputs.into_iter().map(|i| i.0).collect(),
                ..n.value
            })
            .collect(),
        latency_test,
    }
}

fn first_input(inputs: &[(String, Range<usize>)]) -> String {
    inputs.first().map(|i| i.0.clone()).unwrap_or_default()
}
