//! The CRC-32C of any range of a buffer in constant time, after one pass over it.
//!
//! Recovery looks for the next valid record by probing every offset of a damaged region, and each
//! probe checks the body that its offset declares: junk that declares long bodies everywhere would
//! make checksumming each one quadratic in the region's size. Instead, one pass keeps the CRC of
//! every prefix (at checkpoints), and the CRC of a range comes from those of two prefixes:
//!
//! ```text
//! crc(a..b) = crc(s..b) ^ shift(crc(s..a), b - a)
//! ```
//! where `shift(v, n)` multiplies `v` by x^(8n) modulo the CRC-32C polynomial (zlib's
//! `crc32_combine`, solved for the second part; the initial and final inversions cancel out).

use std::ops::Range;

/// The CRC-32C polynomial, bit-reflected: bit 31 holds x^0.
const POLY: u32 = 0x82F6_3B78;
/// x^0, the multiplicative identity, in the reflected representation.
const ONE: u32 = 1 << 31;
/// Shifts by fewer bytes than this come from `lo`; by multiples of it, from `hi`.
const LO_BYTES: usize = 4096;
/// Bytes between stored prefix CRCs: a quarter of the data's size in memory at 4 bytes a
/// checkpoint would be too much for a large segment; 64 costs a sixteenth, and at most 63 bytes
/// checksummed per prefix.
const STRIDE: usize = 64;
/// Ranges up to this long are checksummed directly: as fast as two multiplications.
const DIRECT_MAX: usize = 512;

/// `v` times x, modulo the polynomial.
fn times_x(v: u32) -> u32 {
    (v >> 1) ^ (POLY & 0u32.wrapping_sub(v & 1))
}

/// `a` times `b` modulo the polynomial (zlib's `multmodp`, without branches on the data).
fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    for bit in (0..32).rev() {
        product ^= b & 0u32.wrapping_sub((a >> bit) & 1);
        b = times_x(b);
    }
    product
}

/// Powers x^(8n) modulo the polynomial for shifts by `n` bytes, two lookups each.
#[derive(Debug)]
struct Powers {
    /// `lo[k]` = x^(8k), for k below `LO_BYTES`.
    lo: Vec<u32>,
    /// `hi[k]` = x^(8 * LO_BYTES * k).
    hi: Vec<u32>,
}

impl Powers {
    /// Powers for shifts by up to `max_bytes`.
    fn new(max_bytes: usize) -> Powers {
        let byte = |v: u32| (0..8).fold(v, |v, _| times_x(v));
        let mut lo = Vec::with_capacity(LO_BYTES);
        let mut power = ONE;
        for _ in 0..LO_BYTES {
            lo.push(power);
            power = byte(power);
        }
        // `power` is now x^(8 * LO_BYTES).
        let step = power;
        let mut hi = Vec::with_capacity(max_bytes / LO_BYTES + 1);
        let mut power = ONE;
        for _ in 0..=max_bytes / LO_BYTES {
            hi.push(power);
            power = multmodp(step, power);
        }
        Powers { lo, hi }
    }

    /// `v` times x^(8n): the CRC state `v` carried past `n` more bytes that are all zero (the
    /// inversions apart). `n` at most the `max_bytes` given to `new`.
    fn shift(&self, v: u32, n: usize) -> u32 {
        multmodp(self.hi[n / LO_BYTES], multmodp(self.lo[n % LO_BYTES], v))
    }
}

/// CRC-32Cs of ranges of `data` from `start` on.
#[derive(Debug)]
pub(crate) struct RangeCrc<'a> {
    data: &'a [u8],
    start: usize,
    /// `prefixes[i]` = crc32c of `data[start..start + i * STRIDE]`.
    prefixes: Vec<u32>,
    powers: Powers,
}

impl<'a> RangeCrc<'a> {
    /// One pass over `data[start..]` (`start` at most `data.len()`).
    pub(crate) fn new(data: &'a [u8], start: usize) -> RangeCrc<'a> {
        let rest = &data[start..];
        let mut prefixes = Vec::with_capacity(rest.len() / STRIDE + 1);
        let mut crc = 0;
        prefixes.push(crc);
        for chunk in rest.chunks_exact(STRIDE) {
            crc = crc32c::crc32c_append(crc, chunk);
            prefixes.push(crc);
        }
        RangeCrc {
            data,
            start,
            prefixes,
            powers: Powers::new(rest.len()),
        }
    }

    /// crc32c of `data[start..at]`.
    fn prefix(&self, at: usize) -> u32 {
        let i = (at - self.start) / STRIDE;
        crc32c::crc32c_append(self.prefixes[i], &self.data[self.start + i * STRIDE..at])
    }

    /// crc32c of `data[range]`, equal to `crc32c::crc32c(&data[range])`. A range that starts
    /// before `start` is checksummed directly.
    pub(crate) fn crc(&self, range: Range<usize>) -> u32 {
        if range.len() <= DIRECT_MAX || range.start < self.start {
            return crc32c::crc32c(&self.data[range]);
        }
        self.prefix(range.end) ^ self.powers.shift(self.prefix(range.start), range.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        // xorshift: enough to vary every byte.
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn powers_are_those_of_x() {
        let powers = Powers::new(3 * LO_BYTES);
        assert_eq!(multmodp(ONE, 0x1234_5678), 0x1234_5678);
        assert_eq!(
            powers.lo[1],
            times_x(times_x(times_x(times_x(times_x(times_x(times_x(times_x(ONE))))))))
        );
        assert_eq!(powers.hi[2], multmodp(powers.hi[1], powers.hi[1]));
        assert_eq!(
            powers.shift(ONE, LO_BYTES + 1),
            multmodp(powers.hi[1], powers.lo[1])
        );
    }

    #[test]
    fn empty_ranges_and_the_whole_buffer() {
        let data = bytes(10_000, 7);
        for start in [0, 1, 63, 64, 65, 9_999, 10_000] {
            let crcs = RangeCrc::new(&data, start);
            assert_eq!(crcs.crc(start..start), 0);
            assert_eq!(crcs.crc(start..data.len()), crc32c::crc32c(&data[start..]));
        }
    }

    /// Shifts by up to the longest body a record can declare.
    static POWERS: std::sync::LazyLock<Powers> =
        std::sync::LazyLock::new(|| Powers::new(crate::record::BODY_BYTES_MAX));

    proptest! {
        #[test]
        fn shift_combines_as_crc32c_combine(a: u32, b: u32, n in 0usize..=crate::record::BODY_BYTES_MAX) {
            prop_assert_eq!(POWERS.shift(a, n) ^ b, crc32c::crc32c_combine(a, b, n));
        }

        #[test]
        fn a_range_crc_is_the_crc_of_the_range(
            len in 0usize..40_000,
            seed: u64,
            cuts in proptest::collection::vec((0.0f64..=1.0, 0.0f64..=1.0, 0.0f64..=1.0), 1..20),
        ) {
            let data = bytes(len, seed);
            for (s, a, b) in cuts {
                let start = (s * len as f64) as usize;
                let a = start + (a * (len - start) as f64) as usize;
                let b = a + (b * (len - a) as f64) as usize;
                let crcs = RangeCrc::new(&data, start);
                prop_assert_eq!(crcs.crc(a..b), crc32c::crc32c(&data[a..b]), "{}..{} from {}", a, b, start);
            }
        }
    }
}
