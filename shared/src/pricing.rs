//! Pricing: credits per image by size class, per video second by resolution.

/// Size class of a Seedream image, the unit of its price.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SizeClass {
    /// About one megapixel.
    #[serde(rename = "1K")]
    K1,
    /// About four megapixels.
    #[serde(rename = "2K")]
    K2,
    /// About sixteen megapixels.
    #[serde(rename = "4K")]
    K4,
}

impl SizeClass {
    /// The class of an explicit `width x height`, by pixel count.
    pub fn of_pixels(width: u32, height: u32) -> Self {
        match u64::from(width) * u64::from(height) {
            0..=1_200_000 => Self::K1,
            1_200_001..=4_300_000 => Self::K2,
            _ => Self::K4,
        }
    }
}

/// Video resolution, the unit of a video second's price.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Resolution {
    /// 480p.
    #[serde(rename = "480p")]
    P480,
    /// 720p.
    #[serde(rename = "720p")]
    P720,
    /// 1080p.
    #[serde(rename = "1080p")]
    P1080,
}

impl Resolution {
    /// The provider's spelling (`--resolution 720p`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P480 => "480p",
            Self::P720 => "720p",
            Self::P1080 => "1080p",
        }
    }
}

/// Credits for one image of a size class.
pub fn credits_per_image(size: SizeClass) -> i64 {
    match size {
        SizeClass::K1 => 1,
        SizeClass::K2 => 2,
        SizeClass::K4 => 4,
    }
}

/// Credits for one second of video at a resolution.
pub fn credits_per_video_second(resolution: Resolution) -> i64 {
    match resolution {
        Resolution::P480 => 2,
        Resolution::P720 => 4,
        Resolution::P1080 => 8,
    }
}

/// Credits for `n` images of a size class.
pub fn image_cost(size: SizeClass, n: u32) -> i64 {
    credits_per_image(size) * i64::from(n)
}

/// Credits for a video of `seconds` at a resolution.
pub fn video_cost(resolution: Resolution, seconds: u32) -> i64 {
    credits_per_video_second(resolution) * i64::from(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_price_scales_with_size_and_count() {
        assert_eq!(image_cost(SizeClass::K2, 4), 8);
        assert_eq!(image_cost(SizeClass::K4, 1), 4);
        assert_eq!(image_cost(SizeClass::K1, 15), 15);
    }

    #[test]
    fn pixel_counts_map_to_classes() {
        assert_eq!(SizeClass::of_pixels(1024, 1024), SizeClass::K1);
        assert_eq!(SizeClass::of_pixels(2048, 2048), SizeClass::K2);
        assert_eq!(SizeClass::of_pixels(2720, 1536), SizeClass::K2);
        assert_eq!(SizeClass::of_pixels(4096, 4096), SizeClass::K4);
    }

    #[test]
    fn video_price_scales_with_resolution_and_seconds() {
        assert_eq!(video_cost(Resolution::P720, 5), 20);
        assert_eq!(video_cost(Resolution::P1080, 10), 80);
        assert_eq!(video_cost(Resolution::P480, 3), 6);
    }
}
