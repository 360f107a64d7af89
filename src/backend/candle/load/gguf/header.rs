//! Our own walk over a GGUF header, run before candle-core's reader, so
//! that candle only ever reads a header we have checked all the way
//! through. It keeps nothing but the keys and tensor names (to find
//! duplicates) and the tensors' places, and it fails closed: a header it
//! cannot walk to the end is an error, never a skipped check.
//!
//! What it refuses, each naming the key or tensor, as llama.cpp's reader
//! (`gguf.cpp`) does or more strictly:
//! - headers larger than [`MAX_HEADER_BYTES`], more than [`MAX_TENSORS`]
//!   tensors or [`MAX_METADATA_ENTRIES`] keys, an array of more than
//!   [`MAX_ARRAY_ELEMENTS`] elements, more than [`MAX_METADATA_VALUES`]
//!   values in all (candle keeps 32 bytes per value, so a small file could
//!   otherwise ask for gigabytes);
//! - a key or tensor name given twice (candle's maps keep one), or holding
//!   a NUL byte (candle strips trailing NULs, so `general.alignment\0`
//!   would be `general.alignment` to it and something else to a walk that
//!   compares bytes), or not UTF-8; value strings that are not UTF-8;
//! - arrays of arrays (llama.cpp refuses them too; no key we read is one);
//! - `general.alignment` of a type candle ignores (u64, i64, floats: it
//!   would read every tensor at the default alignment), or not a power of
//!   two (candle divides by it);
//! - tensors with more than 4 dimensions, an element count that overflows,
//!   an unknown type, rows that are not whole blocks, and any offset other
//!   than the running padded sum of the tensors before it (llama.cpp's
//!   rule, which rules out overlapping and misaligned tensors, and a type
//!   whose size contradicts where the next tensor starts), and bytes after
//!   the last tensor beyond its padding (a last tensor whose type claims
//!   fewer bytes than it was written with).

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read};

/// The largest header (metadata and tensor list) we read: real ones are a
/// few MB (Llama 3's 128k-token vocabulary and 280k merges take ~8 MB).
pub(crate) const MAX_HEADER_BYTES: u64 = 64 << 20;
/// The most elements one metadata array may hold: twice the largest real
/// lists (Gemma's 262,144 tokens, Llama 3's 280,147 merges). The tokenizer
/// rebuilt from a list this long peaks near 700 MB (measured: 1.3 GB at
/// 2^20 tokens and merges).
pub(crate) const MAX_ARRAY_ELEMENTS: u64 = 1 << 19;
/// The most metadata values in all, array elements included: candle keeps
/// each in 32 bytes (plus its string), so this bounds its memory to ~128 MB
/// plus the strings' bytes.
pub(crate) const MAX_METADATA_VALUES: u64 = 1 << 22;
/// The most metadata keys (real files have a few dozen).
pub(crate) const MAX_METADATA_ENTRIES: u64 = 1 << 16;
/// The most tensors (a 405B-parameter Llama has ~1,100).
pub(crate) const MAX_TENSORS: u64 = 1 << 16;
/// The longest key, as the GGUF specification allows.
const MAX_KEY_BYTES: u64 = 65_535;
/// Tensor names are shorter than this (llama.cpp's `GGML_MAX_NAME`).
const MAX_NAME_BYTES: u64 = 64;
/// Dimensions of a tensor (llama.cpp's `GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// What the walk learned: counts to hold candle's reading to, and where the
/// tensor data starts.
pub(super) struct Header {
    pub(super) metadata_entries: u64,
    pub(super) tensor_count: u64,
    pub(super) data_offset: u64,
}

/// `(block size, bytes per block)` of the ggml types candle reads, by id.
fn type_layout(id: u32) -> Option<(u64, u64)> {
    Some(match id {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        30 => (1, 2),     // BF16
        _ => return None,
    })
}

fn type_name(ty: u32) -> &'static str {
    match ty {
        0 => "u8",
        1 => "i8",
        2 => "u16",
        3 => "i16",
        4 => "u32",
        5 => "i32",
        6 => "f32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "u64",
        11 => "i64",
        12 => "f64",
        _ => "unknown",
    }
}

/// A reader that knows its position and refuses to go past the end of the
/// file or of [`MAX_HEADER_BYTES`].
struct Walk<'a> {
    r: BufReader<&'a mut File>,
    pos: u64,
    limit: u64,
    file_size: u64,
    wide: bool,
    values: u64,
}

impl Walk<'_> {
    fn need(&self, n: u64, what: &dyn Fn() -> String) -> Result<(), String> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.limit => Ok(()),
            _ if self.limit < self.file_size => Err(format!(
                "{}: the header is larger than the {} MiB we read (MAX_HEADER_BYTES)",
                what(),
                MAX_HEADER_BYTES >> 20
            )),
            _ => Err(format!(
                "{}: needs {n} bytes at offset {}, past the end of the file ({} bytes): truncated?",
                what(),
                self.pos,
                self.file_size
            )),
        }
    }

    fn bytes(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<Vec<u8>, String> {
        self.need(n, what)?;
        let mut b = vec![0u8; n as usize];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("{}: {e}", what()))?;
        self.pos += n;
        Ok(b)
    }

    fn skip(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<(), String> {
        self.need(n, what)?;
        self.r
            .seek_relative(n as i64)
            .map_err(|e| format!("{}: {e}", what()))?;
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, String> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        let b = self.bytes(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    fn len(&mut self, what: &dyn Fn() -> String) -> Result<u64, String> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    /// A string of at most `max` bytes, as UTF-8.
    fn string(&mut self, max: u64, what: &dyn Fn() -> String) -> Result<String, String> {
        let n = self.len(what)?;
        if n > max {
            return Err(format!(
                "{}: a string of {n} bytes (at most {max} allowed)",
                what()
            ));
        }
        let b = self.bytes(n, what)?;
        String::from_utf8(b).map_err(|e| format!("{}: not UTF-8 ({e})", what()))
    }

    fn count_values(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<(), String> {
        self.values = self.values.saturating_add(n);
        if self.values > MAX_METADATA_VALUES {
            return Err(format!(
                "{}: the metadata holds more than {MAX_METADATA_VALUES} values \
                 (MAX_METADATA_VALUES)",
                what()
            ));
        }
        Ok(())
    }

    /// Walks one value of type `ty`, not in an array.
    fn value(&mut self, ty: u32, what: &dyn Fn() -> String) -> Result<(), String> {
        match ty {
            9 => {
                let et = self.u32(what)?;
                let n = self.len(what)?;
                if n > MAX_ARRAY_ELEMENTS {
                    return Err(format!(
                        "{}: an array of {n} elements (at most {MAX_ARRAY_ELEMENTS}, \
                         MAX_ARRAY_ELEMENTS)",
                        what()
                    ));
                }
                self.count_values(n, what)?;
                match et {
                    9 => Err(format!(
                        "{}: an array of arrays (unsupported; llama.cpp refuses them too)",
                        what()
                    )),
                    8 => (0..n).try_for_each(|_| self.string(u64::MAX, what).map(drop)),
                    7 => {
                        let b = self.bytes(n, what)?;
                        match b.iter().find(|&&x| x > 1) {
                            Some(x) => Err(format!("{}: boolean element {x}", what())),
                            None => Ok(()),
                        }
                    }
                    et => match fixed_size(et) {
                        Some(size) => self.skip(n.saturating_mul(size), what),
                        None => Err(format!("{}: unknown element type {et}", what())),
                    },
                }
            }
            8 => {
                self.count_values(1, what)?;
                self.string(u64::MAX, what).map(drop)
            }
            7 => {
                self.count_values(1, what)?;
                match self.bytes(1, what)?[0] {
                    0 | 1 => Ok(()),
                    x => Err(format!("{}: boolean value {x}", what())),
                }
            }
            ty => match fixed_size(ty) {
                Some(size) => {
                    self.count_values(1, what)?;
                    self.skip(size, what)
                }
                None => Err(format!("{}: unknown value type {ty}", what())),
            },
        }
    }
}

fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// Walks the whole header of `file` (`file_size` bytes) and checks it, as
/// the module documentation says. The error is the message for
/// `Error::Gguf`, naming the key or tensor.
pub(super) fn check_header(file: &mut File, file_size: u64) -> Result<Header, String> {
    let mut w = Walk {
        r: BufReader::new(file),
        pos: 0,
        limit: file_size.min(MAX_HEADER_BYTES),
        file_size,
        wide: true,
        values: 0,
    };
    let top = |m: &'static str| move || m.to_string();
    // candle's reader takes the magic in either byte order.
    let magic = w.u32(&top("the magic number"))?;
    if !matches!(magic, 0x4655_4747 | 0x4747_5546) {
        return Err(format!("not a GGUF file (magic {magic:#010x})"));
    }
    w.wide = match w.u32(&top("the version"))? {
        1 => false,
        2 | 3 => true,
        v => return Err(format!("unsupported GGUF version {v} (1 to 3 are)")),
    };
    let tensor_count = w.len(&top("the tensor count"))?;
    let entries = w.len(&top("the metadata count"))?;
    if tensor_count > MAX_TENSORS {
        return Err(format!(
            "{tensor_count} tensors (at most {MAX_TENSORS}, MAX_TENSORS)"
        ));
    }
    if entries > MAX_METADATA_ENTRIES {
        return Err(format!(
            "{entries} metadata keys (at most {MAX_METADATA_ENTRIES}, MAX_METADATA_ENTRIES)"
        ));
    }
    let mut keys = HashSet::new();
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..entries {
        let key = w.string(MAX_KEY_BYTES, &|| format!("metadata key {i}"))?;
        if key.contains('\0') {
            return Err(format!("metadata key {key:?} holds a NUL byte"));
        }
        let what = || format!("metadata `{key}`");
        if !keys.insert(key.clone()) {
            return Err(format!("{}: given twice", what()));
        }
        let ty = w.u32(&what)?;
        if key == "general.alignment" {
            let width = match ty {
                0 | 1 => 1,
                2 | 3 => 2,
                4 | 5 => 4,
                _ => {
                    return Err(format!(
                        "{}: of type {}; it must be a u32 (a wider or other type would be \
                         ignored and the tensors read from the wrong place)",
                        what(),
                        type_name(ty)
                    ))
                }
            };
            let b = w.bytes(width, &what)?;
            let mut le = [0u8; 8];
            le[..b.len()].copy_from_slice(&b);
            let v = u64::from_le_bytes(le);
            let signed = match ty {
                1 => v as u8 as i8 as i64,
                3 => v as u16 as i16 as i64,
                5 => v as u32 as i32 as i64,
                _ => v as i64,
            };
            if signed <= 0 || !(signed as u64).is_power_of_two() {
                return Err(format!("{}: {signed} is not a power of two", what()));
            }
            alignment = signed as u64;
            w.count_values(1, &what)?;
        } else {
            w.value(ty, &what)?;
        }
    }
    let mut names = HashSet::new();
    let mut expected = 0u64; // llama.cpp's running padded sum
    let mut end = 0u64; // unpadded end of the last tensor
    let mut last = String::new();
    for i in 0..tensor_count {
        let name = w.string(u64::MAX, &|| format!("tensor {i}'s name"))?;
        if name.contains('\0') {
            return Err(format!("tensor {name:?} holds a NUL byte in its name"));
        }
        if name.len() as u64 >= MAX_NAME_BYTES {
            return Err(format!(
                "tensor `{name}`: its name is {} bytes (under {MAX_NAME_BYTES} allowed)",
                name.len()
            ));
        }
        let what = || format!("tensor `{name}`");
        if !names.insert(name.clone()) {
            return Err(format!("{}: listed twice", what()));
        }
        let n_dims = w.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "{}: {n_dims} dimensions (at most {MAX_DIMS})",
                what()
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(w.len(&what)?);
        }
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok())
            .ok_or_else(|| format!("{}: dimensions {dims:?} overflow", what()))?;
        let ty = w.u32(&what)?;
        let (block, size) =
            type_layout(ty).ok_or_else(|| format!("{}: unknown ggml type {ty}", what()))?;
        let inner = dims.first().copied().unwrap_or(1);
        if inner % block != 0 {
            return Err(format!(
                "{}: rows of {inner} values are not whole blocks of {block} (type {ty})",
                what()
            ));
        }
        let bytes = elems / block * size;
        let offset = w.u64(&what)?;
        if offset != expected {
            let before = match last.as_str() {
                "" => "it is the first tensor: its data must start at 0".to_string(),
                prev => format!(
                    "the tensor before it, `{prev}`, ends at {expected} (padded) as its type and \
                     dimensions say (overlapping, misaligned, or a type whose size \
                     contradicts the layout?)"
                ),
            };
            return Err(format!("{}: data at offset {offset}, but {before}", what()));
        }
        end = offset
            .checked_add(bytes)
            .ok_or_else(|| format!("{}: offset {offset} + {bytes} bytes overflows", what()))?;
        expected = end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| format!("{}: offset {offset} + {bytes} bytes overflows", what()))?;
        last = name;
    }
    let data_offset = w
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or("the header's end overflows")?;
    if tensor_count > 0 {
        match data_offset.checked_add(end) {
            Some(e) if e <= file_size => {}
            _ => {
                return Err(format!(
                    "tensor `{last}`: the tensor data ({end} bytes from offset {data_offset}) \
                     runs past the end of the file ({file_size} bytes): truncated?"
                ))
            }
        }
        if file_size > data_offset.saturating_add(expected) {
            return Err(format!(
                "tensor `{last}`: {} bytes after its data, the last in the file (does its \
                 type claim fewer bytes than were written?)",
                file_size - data_offset - end
            ));
        }
    }
    Ok(Header {
        metadata_entries: entries,
        tensor_count,
        data_offset,
    })
}
