//! The ladder of rungs: which resolution and framerate go with which bitrate.
//!
//! A ladder is written as a string so that it can be set from `gst-launch-1.0`:
//! rungs separated by `;`, each `WIDTHxHEIGHT@FPS:MIN-MAX` with the bitrate range in kbit/s, e.g. `1280x720@30:1500-4000;640x360@30:200-1200`. `@FPS` may be a fraction (`@30000/1001`)
//! or left out (keep the source framerate). Rungs are kept sorted from the highest bitrate down.

use std::fmt;

/// One rung of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rung {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Framerate as a fraction, `None` to keep the source framerate.
    pub framerate: Option<(u32, u32)>,
    /// Lowest bitrate this rung is used at, bit/s.
    pub min_bps: u64,
    /// Highest bitrate the encoder is given on this rung, bit/s.
    pub max_bps: u64,
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)?;
        match self.framerate {
            Some((n, 1)) => write!(f, "@{n}")?,
            Some((n, d)) => write!(f, "@{n}/{d}")?,
            None => {}
        }
        write!(f, ":{}-{}", self.min_bps / 1000, self.max_bps / 1000)
    }
}

/// A ladder: rungs sorted from the highest bitrate to the lowest. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    rungs: Vec<Rung>,
}

/// Default ladder: 1080p, 720p, 540p and 360p at 30 fps.
pub const DEFAULT_LADDER: &str =
    "1920x1080@30:3000-6000;1280x720@30:1500-4000;960x540@30:800-2200;640x360@30:0-1200";

/// Default viewer ladder for a 720p30 source, encoded once and shared by every viewer: each
/// rung is encoded at one bitrate (minimum = maximum), 2500, 700 and 200 kbit/s. The steps are
/// about 3.5x apart so that a viewer's link, which in a class audience ranges from a phone on
/// 4G to home fibre, usually sits comfortably inside one rung rather than on a boundary.
pub const VIEWER_LADDER_720P30: &str =
    "1280x720@30:2500-2500;640x360@30:700-700;320x180@30:200-200";

/// Why a ladder string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LadderError(String);

impl fmt::Display for LadderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LadderError {}

impl Ladder {
    /// Parses the string form described in the module documentation.
    pub fn parse(text: &str) -> Result<Ladder, LadderError> {
        let mut rungs = Vec::new();
        for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            rungs.push(parse_rung(item).map_err(|why| {
                LadderError(format!(
                    "rung '{item}': {why} (expected WIDTHxHEIGHT@FPS:MINKBPS-MAXKBPS)"
                ))
            })?);
        }
        if rungs.is_empty() {
            return Err(LadderError("a ladder needs at least one rung".into()));
        }
        rungs.sort_by(|a, b| b.max_bps.cmp(&a.max_bps).then(b.min_bps.cmp(&a.min_bps)));
        Ok(Ladder { rungs })
    }

    /// Rungs from the highest bitrate down.
    pub fn rungs(&self) -> &[Rung] {
        &self.rungs
    }

    /// Number of rungs.
    pub fn len(&self) -> usize {
        self.rungs.len()
    }

    /// Always `false`: a ladder has at least one rung.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Reads one rung encoded at one bitrate, `WIDTHxHEIGHT@FPS:KBPS` (`@FPS` optional), as a
    /// ladder encoder's rungs are written in pipeline files.
    pub fn parse_fixed_rung(text: &str) -> Result<Rung, LadderError> {
        let (video, kbps) = text.rsplit_once(':').unwrap_or((text, ""));
        let kbps = kbps.trim();
        let valid = !kbps.is_empty() && kbps.bytes().all(|b| b.is_ascii_digit());
        if !valid || video.contains(';') {
            return Err(LadderError(format!(
                "rung '{text}': expected WIDTHxHEIGHT@FPS:KBPS, one bitrate in kbit/s"
            )));
        }
        parse_rung(&format!("{video}:{kbps}-{kbps}"))
            .map_err(|why| LadderError(format!("rung '{text}': {why}")))
    }

    /// The default viewer ladder for a 720p30 source ([`VIEWER_LADDER_720P30`]).
    pub fn viewer_720p30() -> Ladder {
        Ladder::parse(VIEWER_LADDER_720P30).expect("the viewer ladder parses")
    }

    /// The highest rung whose minimum is at or below `bps`; the lowest rung otherwise.
    pub fn rung_for(&self, bps: u64) -> usize {
        self.rungs
            .iter()
            .position(|r| r.min_bps <= bps)
            .unwrap_or(self.rungs.len() - 1)
    }
}

impl Default for Ladder {
    fn default() -> Self {
        Ladder::parse(DEFAULT_LADDER).expect("default ladder parses")
    }
}

impl fmt::Display for Ladder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rung) in self.rungs.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{rung}")?;
        }
        Ok(())
    }
}

fn parse_rung(item: &str) -> Result<Rung, String> {
    let (video, rates) = item
        .split_once(':')
        .ok_or("missing ':' before the bitrate range")?;
    let (size, fps) = match video.split_once('@') {
        Some((size, fps)) => (size, Some(fps)),
        None => (video, None),
    };
    let (w, h) = size.split_once('x').ok_or("size must be WIDTHxHEIGHT")?;
    let width = parse_positive(w, "width")?;
    let height = parse_positive(h, "height")?;
    let framerate = match fps {
        None => None,
        Some(fps) => Some(match fps.split_once('/') {
            Some((n, d)) => (
                parse_positive(n, "framerate")?,
                parse_positive(d, "framerate")?,
            ),
            None => (parse_positive(fps, "framerate")?, 1),
        }),
    };
    let (min, max) = rates
        .split_once('-')
        .ok_or("bitrate range must be MIN-MAX in kbit/s")?;
    let min_kbps: u64 = min
        .trim()
        .parse()
        .map_err(|_| format!("bad minimum bitrate '{min}'"))?;
    let max_kbps: u64 = max
        .trim()
        .parse()
        .map_err(|_| format!("bad maximum bitrate '{max}'"))?;
    if max_kbps == 0 || max_kbps < min_kbps {
        return Err(format!(
            "maximum bitrate {max_kbps} must be positive and at least the minimum {min_kbps}"
        ));
    }
    Ok(Rung {
        width,
        height,
        framerate,
        min_bps: min_kbps.saturating_mul(1000),
        max_bps: max_kbps.saturating_mul(1000),
    })
}

fn parse_positive(text: &str, what: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(format!("bad {what} '{text}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ladder_is_sorted_high_to_low() {
        let ladder = Ladder::default();
        let heights: Vec<u32> = ladder.rungs().iter().map(|r| r.height).collect();
        assert_eq!(heights, [1080, 720, 540, 360]);
        assert_eq!(ladder.rungs()[1].min_bps, 1_500_000);
        assert_eq!(ladder.rungs()[1].framerate, Some((30, 1)));
    }

    #[test]
    fn viewer_ladder_has_the_three_720p30_rungs() {
        let ladder = Ladder::viewer_720p30();
        let rung = |width, height, bps| Rung {
            width,
            height,
            framerate: Some((30, 1)),
            min_bps: bps,
            max_bps: bps,
        };
        assert_eq!(
            ladder.rungs(),
            [
                rung(1280, 720, 2_500_000),
                rung(640, 360, 700_000),
                rung(320, 180, 200_000),
            ]
        );
        assert_eq!(ladder.to_string(), VIEWER_LADDER_720P30);
    }

    #[test]
    fn one_figure_is_a_rung_at_one_bitrate() {
        let rung = Ladder::parse_fixed_rung("640x360@30:700").unwrap();
        assert_eq!((rung.width, rung.height), (640, 360));
        assert_eq!((rung.min_bps, rung.max_bps), (700_000, 700_000));
        assert_eq!(rung.framerate, Some((30, 1)));
        for bad in [
            "640x360@30:0",
            "640x360@30:1-2",
            "640x360@30",
            "640x360:7;1x1:1",
            "x:5",
        ] {
            assert!(Ladder::parse_fixed_rung(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trips_through_display() {
        let text = "640x360@30000/1001:0-1200;1280x720:1500-4000";
        let ladder = Ladder::parse(text).unwrap();
        assert_eq!(
            ladder.to_string(),
            "1280x720:1500-4000;640x360@30000/1001:0-1200"
        );
        assert_eq!(Ladder::parse(&ladder.to_string()).unwrap(), ladder);
    }

    #[test]
    fn rung_for_picks_highest_affordable() {
        let ladder = Ladder::default();
        assert_eq!(ladder.rung_for(10_000_000), 0);
        assert_eq!(ladder.rung_for(3_000_000), 0);
        assert_eq!(ladder.rung_for(2_999_999), 1);
        assert_eq!(ladder.rung_for(900_000), 2);
        assert_eq!(ladder.rung_for(100_000), 3);
    }

    #[test]
    fn bad_ladders_are_explained() {
        for (text, needle) in [
            ("", "at least one rung"),
            ("1280x720@30", "missing ':'"),
            ("1280720@30:1-2", "WIDTHxHEIGHT"),
            ("1280x0@30:1-2", "height"),
            ("1280x720@0:1-2", "framerate"),
            ("1280x720@30:3000-2000", "at least the minimum"),
            ("1280x720@30:abc-2000", "minimum"),
        ] {
            let err = Ladder::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
