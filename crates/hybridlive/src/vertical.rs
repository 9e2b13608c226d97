//! Vertical 9:16 clips for social platforms: a full-height crop of the landscape picture,
//! re-encoded (clipextract `reencode` mode with a crop as its `reencode-filter`), the audio
//! copied as in every other clip.

use std::fmt;
use std::str::FromStr;

/// Which part of the picture a vertical clip shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The middle.
    Center,
    /// The left edge.
    Left,
    /// The right edge.
    Right,
    /// From this many pixels from the left edge.
    X(u32),
}

impl FromStr for Region {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "center" | "centre" => Ok(Region::Center),
            "left" => Ok(Region::Left),
            "right" => Ok(Region::Right),
            t => t.parse().map(Region::X).map_err(|_| {
                format!(
                    "invalid crop region {s:?}: expected center, left, right or an x offset in \
                     pixels"
                )
            }),
        }
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Region::Center => f.write_str("center"),
            Region::Left => f.write_str("left"),
            Region::Right => f.write_str("right"),
            Region::X(x) => write!(f, "x{x}"),
        }
    }
}

/// What vertical clips look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vertical {
    /// Where the crop sits.
    pub region: Region,
    /// Output height (the width follows at 9:16); `None` keeps the crop's own size.
    pub height: Option<u32>,
}

/// The vertical options of `clip` and `repurpose`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerticalArgs {
    /// Also write a vertical 9:16 version of each clip (re-encoded, audio copied): a
    /// full-height crop at REGION: center (the default), left, right or an x offset in pixels.
    #[arg(
        long,
        value_name = "REGION",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "center"
    )]
    pub vertical: Option<Region>,
    /// Height of vertical clips, e.g. 1920 for 1080x1920 (default: the source's height, not
    /// scaled).
    #[arg(long, value_name = "PIXELS", requires = "vertical", value_parser = clap::value_parser!(u32).range(16..=8192))]
    pub vertical_height: Option<u32>,
}

impl VerticalArgs {
    /// The vertical output asked for, if any.
    pub fn vertical(&self) -> Option<Vertical> {
        self.vertical.map(|region| Vertical {
            region,
            height: self.vertical_height,
        })
    }
}

/// A crop of one source picture and the size it is scaled to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    /// Pixels removed on the left.
    pub left: u32,
    /// Pixels removed on the right.
    pub right: u32,
    /// Pixels removed at the top.
    pub top: u32,
    /// Pixels removed at the bottom.
    pub bottom: u32,
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
    /// `videoflip` `video-direction` that turns the coded picture upright first (a rotated
    /// source: the crop is in display space, the output has no rotation left to signal).
    pub turn: Option<&'static str>,
}

/// The `videoflip` direction that shows a picture as its `image-orientation` tag asks.
pub fn upright_direction(orientation: &str) -> Option<&'static str> {
    Some(match orientation {
        "rotate-90" => "90r",
        "rotate-180" => "180",
        "rotate-270" => "90l",
        "flip-rotate-0" => "horiz",
        "flip-rotate-90" => "ul-lr",
        "flip-rotate-180" => "vert",
        "flip-rotate-270" => "ur-ll",
        _ => return None,
    })
}

/// Whether a picture with this orientation is shown with width and height swapped.
pub fn swaps_axes(orientation: &str) -> bool {
    matches!(
        orientation,
        "rotate-90" | "rotate-270" | "flip-rotate-90" | "flip-rotate-270"
    )
}

fn even(v: u32) -> u32 {
    v & !1
}

impl Vertical {
    /// The 9:16 crop of a `width`×`height` picture (square pixels).
    pub fn crop(&self, width: u32, height: u32) -> Result<Crop, String> {
        if width < 2 || height < 2 {
            return Err(format!("cannot crop a {width}x{height} picture"));
        }
        // Full height when the picture is wider than 9:16, else full width.
        let (cw, ch) = if (height as u64 * 9 + 8) / 16 <= width as u64 {
            (even(((height as u64 * 9 + 8) / 16) as u32).max(2), height)
        } else {
            (
                width,
                even(((width as u64 * 16 + 4) / 9) as u32).min(height),
            )
        };
        let spare = width - cw;
        let left = match self.region {
            Region::Center => spare / 2,
            Region::Left => 0,
            Region::Right => spare,
            Region::X(x) if x <= spare => x,
            Region::X(x) => {
                return Err(format!(
                    "crop at x={x} does not fit: a {cw}x{ch} crop of a {width}x{height} picture \
                     starts at x=0..{spare}"
                ));
            }
        };
        let top = (height - ch) / 2;
        let (w, h) = match self.height {
            Some(h) => {
                let h = even(h).max(2);
                (even(((h as u64 * 9 + 8) / 16) as u32).max(2), h)
            }
            None => (cw, ch),
        };
        Ok(Crop {
            left,
            right: spare - left,
            top,
            bottom: height - ch - top,
            width: w,
            height: h,
            turn: None,
        })
    }
}

impl Crop {
    /// The crop and scale as raw video elements for clipextract's `reencode-filter`. (Bare caps
    /// at the end of a bin description do not parse: the caps go into a capsfilter.)
    pub fn filter(&self) -> String {
        let turn = self
            .turn
            .map(|d| format!("videoflip video-direction={d} ! "))
            .unwrap_or_default();
        format!(
            "{turn}videocrop left={} right={} top={} bottom={} ! videoscale ! \
             capsfilter caps=\"video/x-raw,width={},height={},pixel-aspect-ratio=1/1\"",
            self.left, self.right, self.top, self.bottom, self.width, self.height
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(region: &str, height: Option<u32>) -> Vertical {
        Vertical {
            region: region.parse().unwrap(),
            height,
        }
    }

    #[test]
    fn crops_landscape_to_nine_sixteen() {
        let c = v("center", None).crop(1920, 1080).unwrap();
        assert_eq!((c.left, c.right, c.width, c.height), (656, 656, 608, 1080));
        let c = v("left", Some(1920)).crop(1920, 1080).unwrap();
        assert_eq!((c.left, c.right, c.width, c.height), (0, 1312, 1080, 1920));
        let c = v("right", None).crop(640, 360).unwrap();
        assert_eq!((c.left, c.right, c.width), (438, 0, 202));
        let c = v("100", None).crop(640, 360).unwrap();
        assert_eq!((c.left, c.right), (100, 338));
        assert!(v("500", None).crop(640, 360).is_err());
        // Already narrower than 9:16: full width, top and bottom cut.
        let c = v("center", None).crop(540, 1200).unwrap();
        assert_eq!(
            (c.left, c.top, c.bottom, c.width, c.height),
            (0, 120, 120, 540, 960)
        );
        assert!("middle".parse::<Region>().is_err());
        assert_eq!(Region::X(12).to_string(), "x12");
    }
}
