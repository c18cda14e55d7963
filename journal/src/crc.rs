//! CRC32C of records with the hardware instruction, one record at a time or several
//! interleaved.
//!
//! The `crc32` instruction (SSE4.2) folds 8 bytes per instruction, with a latency of 3 cycles
//! and a throughput of one per cycle: one record's CRC is a dependent chain that keeps the
//! unit a third busy (about 27 cycles for a 64-byte payload). The CRCs of different records
//! are independent, so a batch computes four at once, one chain per record, and pays about
//! one cycle per 8 bytes instead of three. The `crc32c` crate (used for everything else and
//! as the fallback here) interleaves only within one buffer of 768 bytes or more, and it
//! cannot be inlined into the append path; this module is the few lines it lacks.
//!
//! Every function computes exactly `crc32c::crc32c_append(seed, body)`; the tests check it.

/// `crc32c::crc32c_append(seed, body)`.
#[inline]
pub(crate) fn crc32c_append(seed: u32, body: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2, the only feature `x86::one` enables.
            return unsafe { x86::one(seed, body) };
        }
    }
    crc32c::crc32c_append(seed, body)
}

/// `crc32c::crc32c_append(seeds[i], bodies[i])` for each `i`, the four chains interleaved.
#[inline]
pub(crate) fn crc32c_append4(seeds: [u32; 4], bodies: [&[u8]; 4]) -> [u32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2, the only feature `x86::four` enables.
            return unsafe { x86::four(seeds, bodies) };
        }
    }
    [0, 1, 2, 3].map(|i| crc32c::crc32c_append(seeds[i], bodies[i]))
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};

    /// Folds `body` into the (inverted) CRC register `reg`: 8 bytes at a time, then bytes.
    #[inline]
    #[target_feature(enable = "sse4.2")]
    #[allow(unused_unsafe)] // the intrinsics are safe here from Rust 1.87, unsafe before
    unsafe fn fold(mut reg: u64, body: &[u8]) -> u64 {
        let mut words = body.chunks_exact(8);
        for word in &mut words {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            // SAFETY: SSE4.2 is enabled for this function (the caller checked the CPU).
            reg = unsafe { _mm_crc32_u64(reg, word) };
        }
        for &byte in words.remainder() {
            // SAFETY: as above.
            reg = u64::from(unsafe { _mm_crc32_u8(reg as u32, byte) });
        }
        reg
    }

    /// One CRC.
    ///
    /// # Safety
    ///
    /// The CPU must support SSE4.2.
    #[target_feature(enable = "sse4.2")]
    pub(super) unsafe fn one(seed: u32, body: &[u8]) -> u32 {
        // SAFETY: the caller guarantees SSE4.2, which `fold` needs.
        !(unsafe { fold(u64::from(!seed), body) } as u32)
    }

    /// Four CRCs, interleaved over the words all four bodies have, each finished alone.
    ///
    /// # Safety
    ///
    /// The CPU must support SSE4.2.
    #[target_feature(enable = "sse4.2")]
    #[allow(unused_unsafe)] // the intrinsics are safe here from Rust 1.87, unsafe before
    pub(super) unsafe fn four(seeds: [u32; 4], bodies: [&[u8]; 4]) -> [u32; 4] {
        let mut reg = seeds.map(|s| u64::from(!s));
        let common = bodies.iter().map(|b| b.len()).min().unwrap_or(0) & !7;
        let [a, b, c, d] = bodies.map(|body| body[..common].chunks_exact(8));
        for (((wa, wb), wc), wd) in a.zip(b).zip(c).zip(d) {
            let word = |w: &[u8]| u64::from_le_bytes(w.try_into().expect("8 bytes"));
            // SAFETY: SSE4.2 is enabled for this function (the caller checked the CPU).
            unsafe {
                reg[0] = _mm_crc32_u64(reg[0], word(wa));
                reg[1] = _mm_crc32_u64(reg[1], word(wb));
                reg[2] = _mm_crc32_u64(reg[2], word(wc));
                reg[3] = _mm_crc32_u64(reg[3], word(wd));
            }
        }
        // SAFETY: the caller guarantees SSE4.2, which `fold` needs.
        [0, 1, 2, 3].map(|i| !(unsafe { fold(reg[i], &bodies[i][common..]) } as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_crc32c_crate_for_every_length_and_alignment() {
        let data: Vec<u8> = (0..600u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in 0..300 {
            for start in 0..9 {
                let body = &data[start..start + len];
                let seed = len as u32 * 17 + 16;
                assert_eq!(crc32c_append(seed, body), crc32c::crc32c_append(seed, body));
            }
        }
        for (la, lb, lc, ld) in [
            (0, 0, 0, 0),
            (72, 72, 72, 72),
            (5, 80, 264, 1),
            (300, 9, 16, 8),
        ] {
            let bodies = [
                &data[..la],
                &data[3..3 + lb],
                &data[8..8 + lc],
                &data[1..1 + ld],
            ];
            let seeds = [1, 2, u32::MAX, 0];
            let want = [0, 1, 2, 3].map(|i| crc32c::crc32c_append(seeds[i], bodies[i]));
            assert_eq!(crc32c_append4(seeds, bodies), want);
        }
    }
}
