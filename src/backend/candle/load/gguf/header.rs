//! A skip-only walk over a GGUF header, run before candle-core's reader to
//! check the one value that reader uses unchecked (`general.alignment`, a
//! divisor). Nothing is kept; every length is checked against the file size.

use std::fs::File;
use std::io::{BufReader, Read};

/// The integer value of `general.alignment` in the header of `file`, found
/// by skipping over the metadata (nothing is kept, every length is checked
/// against the file size); `None` if it is absent or not an integer, or if
/// the header does not parse (candle's reader then says why).
pub(super) fn header_alignment(file: &mut File, file_size: u64) -> Option<i128> {
    let mut r = BufReader::new(file);
    let u32_ = |r: &mut BufReader<&mut File>| -> Option<u32> {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b))
    };
    // candle's reader takes the magic in either byte order.
    if !matches!(u32_(&mut r)?, 0x4655_4747 | 0x4747_5546) {
        return None;
    }
    let wide = match u32_(&mut r)? {
        1 => false,
        2 | 3 => true,
        _ => return None,
    };
    let _tensors = read_len(&mut r, wide)?;
    let entries = read_len(&mut r, wide)?;
    const KEY: &[u8] = b"general.alignment";
    for _ in 0..entries {
        let n = read_len(&mut r, wide)?;
        if n > file_size {
            return None;
        }
        let is_key = if n == KEY.len() as u64 {
            let mut key = [0u8; KEY.len()];
            r.read_exact(&mut key).ok()?;
            key == KEY
        } else {
            r.seek_relative(n as i64).ok()?;
            false
        };
        let ty = u32_(&mut r)?;
        if is_key {
            let mut b = [0u8; 8];
            let width = match ty {
                0 | 1 => 1,
                2 | 3 => 2,
                4 | 5 => 4,
                10 | 11 => 8,
                _ => return None,
            };
            r.read_exact(&mut b[..width]).ok()?;
            let v = u64::from_le_bytes(b);
            return Some(match ty {
                1 => v as u8 as i8 as i128,
                3 => v as u16 as i16 as i128,
                5 => v as u32 as i32 as i128,
                11 => v as i64 as i128,
                _ => v as i128,
            });
        }
        skip_value(&mut r, ty, wide, file_size, 0)?;
    }
    None
}

fn read_len(r: &mut impl Read, wide: bool) -> Option<u64> {
    let mut b = [0u8; 8];
    let n = if wide { 8 } else { 4 };
    r.read_exact(&mut b[..n]).ok()?;
    Some(u64::from_le_bytes(b))
}

/// Skips one metadata value of GGUF type `ty`.
fn skip_value(
    r: &mut BufReader<&mut File>,
    ty: u32,
    wide: bool,
    file_size: u64,
    depth: usize,
) -> Option<()> {
    let fixed = |ty: u32| match ty {
        0 | 1 | 7 => Some(1u64),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    let skip = |r: &mut BufReader<&mut File>, n: u64| -> Option<()> {
        if n > file_size {
            return None;
        }
        r.seek_relative(n as i64).ok()
    };
    match ty {
        8 => {
            let n = read_len(r, wide)?;
            skip(r, n)
        }
        9 if depth < 4 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).ok()?;
            let et = u32::from_le_bytes(b);
            let n = read_len(r, wide)?;
            if n > file_size {
                return None;
            }
            match fixed(et) {
                Some(size) => skip(r, n.checked_mul(size)?),
                None => (0..n).try_for_each(|_| skip_value(r, et, wide, file_size, depth + 1)),
            }
        }
        ty => skip(r, fixed(ty)?),
    }
}
