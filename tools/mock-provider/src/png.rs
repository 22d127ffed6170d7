//! Procedural, valid PNG files (8-bit RGB gradient derived from a seed).

/// Largest side of a generated PNG, to keep responses small.
pub const MAX_SIDE: u32 = 1024;

/// Encodes a `width`x`height` RGB gradient whose colours derive from `seed`.
pub fn gradient_png(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let w = width.clamp(1, MAX_SIDE);
    let h = height.clamp(1, MAX_SIDE);
    let mix = splitmix(seed);
    let c0 = [
        (mix & 0xff) as u32,
        (mix >> 8 & 0xff) as u32,
        (mix >> 16 & 0xff) as u32,
    ];
    let c1 = [
        (mix >> 24 & 0xff) as u32,
        (mix >> 32 & 0xff) as u32,
        (mix >> 40 & 0xff) as u32,
    ];
    let mut raw = Vec::with_capacity(((w * 3 + 1) * h) as usize);
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            let tx = if w > 1 { x * 255 / (w - 1) } else { 0 };
            let ty = if h > 1 { y * 255 / (h - 1) } else { 0 };
            let r = (c0[0] * (255 - tx) + c1[0] * tx) / 255;
            let g = (c0[1] * (255 - ty) + c1[1] * ty) / 255;
            let t = (tx + ty) / 2;
            let b = (c0[2] * (255 - t) + c1[2] * t) / 255;
            raw.extend_from_slice(&[r as u8, g as u8, b as u8]);
        }
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, truecolour, deflate, adaptive, no interlace
    let idat = miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6);

    let mut out = Vec::with_capacity(idat.len() + 64);
    out.extend_from_slice(b"\x89PNG\r\n\x1a\n");
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Appends one PNG chunk (length, type, data, CRC) to `out`.
pub(crate) fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// FNV-1a, used to derive a seed from a file name.
pub(crate) fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_png() {
        let png = gradient_png(64, 32, 7);
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 64);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 32);
        // IDAT inflates to the expected raw size.
        let idat_len = u32::from_be_bytes(png[33..37].try_into().unwrap()) as usize;
        assert_eq!(&png[37..41], b"IDAT");
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&png[41..41 + idat_len]).unwrap();
        assert_eq!(raw.len(), (64 * 3 + 1) * 32);
        assert!(png.ends_with(&[0xae, 0x42, 0x60, 0x82])); // IEND CRC
        assert_eq!(gradient_png(64, 32, 7), png);
        assert_ne!(gradient_png(64, 32, 8), png);
    }
}
