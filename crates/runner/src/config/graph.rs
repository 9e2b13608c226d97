//! The graph checks, once every table is read: names are unique, every input names a
//! component that can feed it, media types and codecs fit the consumer, transforms do not
//! loop, and each abrcontroller steers exactly one encoder feeding the uplink it watches.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use super::diagnostics::{Diagnostic, suggest};
use super::model::{Encoder, EncoderKind, Media, Output, Source, Transform, TransformKind};
use super::reader::Named;

/// Checks how the components read from each other, adding a diagnostic per problem; inputs
/// naming a `broken` component (already reported) are not reported again. `steerable`: the
/// output types an abrcontroller may watch.
pub(super) fn check(
    diags: &mut Vec<Diagnostic>,
    broken: &BTreeSet<String>,
    steerable: &[&str],
    sources: &[Named<Source>],
    transforms: &[Named<Transform>],
    encoders: &[Named<Encoder>],
    outputs: &[Named<Output>],
) {
    Graph {
        diags,
        broken,
        steerable,
    }
    .check_all(sources, transforms, encoders, outputs);
}

struct Graph<'a> {
    diags: &'a mut Vec<Diagnostic>,
    broken: &'a BTreeSet<String>,
    steerable: &'a [&'a str],
}

impl Graph<'_> {
    fn unknown_input(
        &mut self,
        component: &str,
        input: &str,
        span: Range<usize>,
        allowed: &[&str],
        what: &str,
    ) {
        if self.broken.contains(input) {
            return;
        }
        self.diags.push(Diagnostic {
            span,
            component: Some(component.to_string()),
            key: Some("inputs".into()),
            message: format!("`{input}` is not {what}"),
            help: suggest(input, allowed.iter().copied()),
        });
    }

    fn check_all(
        &mut self,
        sources: &[Named<Source>],
        transforms: &[Named<Transform>],
        encoders: &[Named<Encoder>],
        outputs: &[Named<Output>],
    ) {
        // Names are global: an input names a component, whatever its section.
        let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
        let all = sources
            .iter()
            .map(|n| (n.value.name.as_str(), "sources", &n.span))
            .chain(
                transforms
                    .iter()
                    .map(|n| (n.value.name.as_str(), "transforms", &n.span)),
            )
            .chain(
                encoders
                    .iter()
                    .map(|n| (n.value.name.as_str(), "encoders", &n.span)),
            )
            .chain(
                outputs
                    .iter()
                    .map(|n| (n.value.name.as_str(), "outputs", &n.span)),
            );
        for (name, section, span) in all {
            if let Some(first) = seen.insert(name, section) {
                self.diags.push(Diagnostic {
                    span: span.clone(),
                    component: Some(format!("{section}.{name}")),
                    key: None,
                    message: format!(
                        "the name `{name}` is already used by {first}.{name}: names must be unique"
                    ),
                    help: None,
                });
            }
        }
        let raw: Vec<&str> = sources
            .iter()
            .map(|n| n.value.name.as_str())
            .chain(transforms.iter().map(|n| n.value.name.as_str()))
            .collect();
        for t in transforms {
            let component = format!("transforms.{}", t.value.name);
            self.single_input(&component, t, &raw, "a source or transform");
        }
        self.check_transform_cycles(transforms);
        self.check_abrcontrollers(transforms, encoders, outputs);
        for e in encoders {
            let component = format!("encoders.{}", e.value.name);
            if let Some((input, _)) = e.inputs.first()
                && !e.value.rungs.is_empty()
            {
                self.check_rungs(&component, e, input, sources, transforms);
            }
            if let Some((input, span)) =
                self.single_input(&component, e, &raw, "a source or transform")
                && e.value.kind.media() == Media::Audio
                && !self.has_audio(&input, sources, transforms)
            {
                self.diags.push(Diagnostic {
                    span,
                    component: Some(component),
                    key: Some("inputs".into()),
                    message: format!("`{input}` carries no audio (its source has `audio = false`)"),
                    help: None,
                });
            }
        }
        let encoder_names: Vec<&str> = encoders.iter().map(|n| n.value.name.as_str()).collect();
        // Outputs served at one fixed path: how many of each kind so far.
        let mut served: BTreeMap<&str, usize> = BTreeMap::new();
        for o in outputs {
            let component = format!("outputs.{}", o.value.name);
            let mut video = 0;
            let mut vp8 = 0;
            let mut audio = 0;
            let mut resolved = true;
            for (input, span) in &o.inputs {
                let Some(encoder) = encoders.iter().find(|e| &e.value.name == input) else {
                    resolved = false;
                    self.unknown_input(
                        &component,
                        input,
                        span.clone(),
                        &encoder_names,
                        "an encoder: outputs take encoded streams",
                    );
                    continue;
                };
                match &encoder.value.kind {
                    EncoderKind::H264 { .. } => video += 1,
                    EncoderKind::Vp8 { .. } => {
                        video += 1;
                        vp8 += 1;
                    }
                    EncoderKind::Aac { .. } | EncoderKind::Opus { .. } => audio += 1,
                }
                // What the kind cannot carry, or needs of the encoder: the kind says.
                if let Some(refusal) = o.value.kind.refuses_input(input, &encoder.value.kind) {
                    self.diags.push(Diagnostic {
                        span: span.clone(),
                        component: Some(component.clone()),
                        key: Some("inputs".into()),
                        message: refusal.message,
                        help: refusal.help,
                    });
                }
            }
            let type_name = o.value.kind.type_name();
            if let Some(path) = o.value.kind.served_at() {
                let count = served.entry(type_name).or_default();
                *count += 1;
                if *count > 1 {
                    self.diags.push(Diagnostic {
                        span: o.span.clone(),
                        component: Some(component.clone()),
                        key: None,
                        message: format!(
                            "only one {type_name} output is served at {path}; remove this one"
                        ),
                        help: None,
                    });
                }
            }
            // WebRTC viewers get the first codec their offer has: one H.264 and one VP8 encoder
            // may both feed it, in the order of preference.
            let video_ok =
                video == 1 || (o.value.kind.type_name() == "webrtc" && video == 2 && vp8 == 1);
            if resolved && !o.inputs.is_empty() && (!video_ok || audio > 1) {
                self.diags.push(Diagnostic {
                    span: o.span.clone(),
                    component: Some(component),
                    key: Some("inputs".into()),
                    message: format!("an output takes exactly one video encoder (a webrtc output: one h264 and one vp8 at most) and at most one audio encoder (found {video} video, {audio} audio)"),
                    help: None,
                });
            }
        }
    }

    /// An abrcontroller feeds exactly one h264 encoder, which feeds only the uplink output
    /// named by `output`: its bitrate and picture size change with the link, which recordings
    /// and HLS must not inherit.
    fn check_abrcontrollers(
        &mut self,
        transforms: &[Named<Transform>],
        encoders: &[Named<Encoder>],
        outputs: &[Named<Output>],
    ) {
        let mut controlled_outputs: BTreeMap<&str, &str> = BTreeMap::new();
        for t in transforms {
            let TransformKind::Abrcontroller {
                output,
                output_span,
                ..
            } = &t.value.kind
            else {
                continue;
            };
            let name = t.value.name.as_str();
            let component = format!("transforms.{name}");
            for reader in transforms.iter().filter(|u| {
                u.inputs.first().is_some_and(|i| i.0 == name)
                    && !matches!(
                        u.value.kind,
                        TransformKind::Gst {
                            media: Media::Audio,
                            ..
                        }
                    )
            }) {
                let (_, span) = &reader.inputs[0];
                self.diags.push(Diagnostic {
                    span: span.clone(),
                    component: Some(format!("transforms.{}", reader.value.name)),
                    key: Some("inputs".into()),
                    message: format!(
                        "`{name}` is an abrcontroller: only the encoder it steers may read its video"
                    ),
                    help: Some(format!(
                        "put this transform before `{name}`, or read from `{name}`'s input"
                    )),
                });
            }
            let video_encoders: Vec<&Named<Encoder>> = encoders
                .iter()
                .filter(|e| {
                    e.value.kind.media() == Media::Video
                        && e.inputs.first().is_some_and(|i| i.0 == name)
                })
                .collect();
            let encoder = match video_encoders.as_slice() {
                [one] if matches!(one.value.kind, EncoderKind::Vp8 { .. }) => {
                    self.diags.push(Diagnostic {
                        span: one.inputs[0].1.clone(),
                        component: Some(format!("encoders.{}", one.value.name)),
                        key: Some("inputs".into()),
                        message: "an abrcontroller steers h264 encoders only".into(),
                        help: Some(
                            "read from the abrcontroller with a `type = \"h264\"` encoder".into(),
                        ),
                    });
                    continue;
                }
                [one] => &one.value.name,
                [] => {
                    self.diags.push(Diagnostic {
                        span: t.span.clone(),
                        component: Some(component),
                        key: None,
                        message: "no h264 encoder reads from this abrcontroller".into(),
                        help: Some(format!(
                            "add an encoder with `type = \"h264\"` and `inputs = [\"{name}\"]`"
                        )),
                    });
                    continue;
                }
                [_, second, ..] => {
                    self.diags.push(Diagnostic {
                        span: second.inputs[0].1.clone(),
                        component: Some(format!("encoders.{}", second.value.name)),
                        key: Some("inputs".into()),
                        message: format!(
                            "`{name}` already steers `{}`: an abrcontroller steers one encoder",
                            video_encoders[0].value.name
                        ),
                        help: None,
                    });
                    continue;
                }
            };
            let Some(target) = outputs.iter().find(|o| &o.value.name == output) else {
                if !self.broken.contains(output.as_str()) {
                    let names: Vec<&str> = outputs.iter().map(|o| o.value.name.as_str()).collect();
                    self.diags.push(Diagnostic {
                        span: output_span.clone(),
                        component: Some(component),
                        key: Some("output".into()),
                        message: format!("`{output}` is not an output"),
                        help: suggest(output, names),
                    });
                }
                continue;
            };
            let kind = target.value.kind.type_name();
            if !self.steerable.contains(&kind) {
                self.diags.push(Diagnostic {
                    span: output_span.clone(),
                    component: Some(component.clone()),
                    key: Some("output".into()),
                    message: format!(
                        "`{output}` is a {kind} output, which gives no feedback about its link (expected one of {})",
                        self.steerable.join(", ")
                    ),
                    help: None,
                });
            }
            if let Some(first) = controlled_outputs.insert(output.as_str(), name) {
                self.diags.push(Diagnostic {
                    span: output_span.clone(),
                    component: Some(component.clone()),
                    key: Some("output".into()),
                    message: format!("`{output}` is already steered by transforms.{first}"),
                    help: None,
                });
            }
            if !target.inputs.iter().any(|i| &i.0 == encoder) {
                self.diags.push(Diagnostic {
                    span: output_span.clone(),
                    component: Some(component.clone()),
                    key: Some("output".into()),
                    message: format!(
                        "`{output}` does not take `{encoder}`, the encoder this abrcontroller steers"
                    ),
                    help: Some(format!(
                        "list `{encoder}` in the `inputs` of [outputs.{output}]"
                    )),
                });
            }
            for other in outputs.iter().filter(|o| &o.value.name != output) {
                if let Some((_, span)) = other.inputs.iter().find(|i| &i.0 == encoder) {
                    self.diags.push(Diagnostic {
                        span: span.clone(),
                        component: Some(format!("outputs.{}", other.value.name)),
                        key: Some("inputs".into()),
                        message: format!(
                            "`{encoder}` is steered by abrcontroller `{name}` for `{output}`: its bitrate and picture size follow that link"
                        ),
                        help: Some(
                            "give this output an encoder of its own, reading from the abrcontroller's input"
                                .into(),
                        ),
                    });
                }
            }
        }
    }

    fn single_input<T>(
        &mut self,
        component: &str,
        n: &Named<T>,
        allowed: &[&str],
        what: &str,
    ) -> Option<(String, Range<usize>)> {
        if n.inputs.len() > 1 {
            self.diags.push(Diagnostic {
                span: n.inputs[1].1.clone(),
                component: Some(component.to_string()),
                key: Some("inputs".into()),
                message: "takes exactly one input".into(),
                help: None,
            });
        }
        let (input, span) = n.inputs.first()?;
        if !allowed.contains(&input.as_str()) {
            self.unknown_input(component, input, span.clone(), allowed, what);
            return None;
        }
        Some((input.clone(), span.clone()))
    }

    /// A ladder's rungs fit its source: none larger than the source's picture or faster than
    /// its frame rate, each the source's shape (a rung of another aspect ratio would stretch
    /// the picture), and not steered by an abrcontroller (it scales one encode for one link).
    fn check_rungs(
        &mut self,
        component: &str,
        encoder: &Named<Encoder>,
        input: &str,
        sources: &[Named<Source>],
        transforms: &[Named<Transform>],
    ) {
        if let Some(t) = transforms.iter().find(|t| t.value.name == input)
            && matches!(t.value.kind, TransformKind::Abrcontroller { .. })
        {
            self.diags.push(Diagnostic {
                span: encoder.span.clone(),
                component: Some(component.to_string()),
                key: Some("rungs".into()),
                message: format!(
                    "`{input}` is an abrcontroller, which steers one encode for one uplink: a ladder encoder cannot read from it"
                ),
                help: Some("read from the abrcontroller's input instead".into()),
            });
            return;
        }
        let Some(video) = self.source_video(input, sources, transforms) else {
            return;
        };
        for rung in &encoder.value.rungs {
            let size = format!("{}x{}", rung.width, rung.height);
            let source = format!("{}x{}", video.width, video.height);
            let message = if rung.width > video.width || rung.height > video.height {
                Some(format!(
                    "rung {size} is above the source's {source}: a rung scales down, never up"
                ))
            } else if rung
                .framerate
                .is_some_and(|rate| rate.fps() > video.framerate.fps() + 1e-6)
            {
                Some(format!(
                    "rung {size} asks for more frames per second than the source's {}",
                    video.framerate.fps()
                ))
            } else {
                // Sizes are rounded to even numbers: 2 pixels of slack either way.
                let expected =
                    f64::from(rung.width) * f64::from(video.height) / f64::from(video.width);
                ((expected - f64::from(rung.height)).abs() > 2.0).then(|| {
                    format!(
                        "rung {size} does not fit the {source} source: another shape would stretch the picture (expected a height of about {expected:.0})"
                    )
                })
            };
            if let Some(message) = message {
                self.diags.push(Diagnostic {
                    span: rung.span.clone(),
                    component: Some(component.to_string()),
                    key: Some("rungs".into()),
                    message,
                    help: None,
                });
            }
        }
    }

    /// The picture of the source that `name` (a source or transform) reads from.
    fn source_video<'s>(
        &self,
        name: &str,
        sources: &'s [Named<Source>],
        transforms: &[Named<Transform>],
    ) -> Option<&'s super::model::VideoFormat> {
        let mut current = name;
        for _ in 0..=transforms.len() {
            if let Some(s) = sources.iter().find(|s| s.value.name == current) {
                return Some(&s.value.video);
            }
            current = &transforms
                .iter()
                .find(|t| t.value.name == current)?
                .inputs
                .first()?
                .0;
        }
        None
    }

    fn has_audio(
        &self,
        name: &str,
        sources: &[Named<Source>],
        transforms: &[Named<Transform>],
    ) -> bool {
        let mut current = name;
        for _ in 0..=transforms.len() {
            if let Some(s) = sources.iter().find(|s| s.value.name == current) {
                return s.value.audio.is_some();
            }
            match transforms
                .iter()
                .find(|t| t.value.name == current)
                .and_then(|t| t.inputs.first())
            {
                Some((input, _)) => current = input,
                None => return false,
            }
        }
        false
    }

    fn check_transform_cycles(&mut self, transforms: &[Named<Transform>]) {
        for t in transforms {
            let mut visited = BTreeSet::new();
            let mut current = t.value.name.as_str();
            while let Some(next) = transforms.iter().find(|x| x.value.name == current) {
                if !visited.insert(current) {
                    self.diags.push(Diagnostic {
                        span: t.span.clone(),
                        component: Some(format!("transforms.{}", t.value.name)),
                        key: Some("inputs".into()),
                        message: "transforms feed each other in a loop".into(),
                        help: None,
                    });
                    break;
                }
                match next.inputs.first() {
                    Some((input, _)) => current = input,
                    None => break,
                }
            }
        }
    }
}
