//! Robust statistics for the doctor: median and MAD (median absolute deviation).
//!
//! median of sorted x₁..xₙ: x₍ₙ₊₁₎/₂ for odd n, the mean of the two middle values for even
//! n. MAD = median |xᵢ − median|; 1.4826 × MAD estimates the standard deviation of normal
//! data while ignoring up to half of the values as outliers.

/// 1.4826 × MAD estimates σ for normally distributed data.
pub(crate) const MAD_TO_SIGMA: f64 = 1.4826;

/// The median of `sorted` (ascending); `None` when empty.
pub(crate) fn median_sorted(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

/// The median of `values` (any order; sorted in place). NaNs sort last.
pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    median_sorted(values)
}

/// The median of `sorted` (ascending) without its element at `skip`; `None` if nothing
/// is left. O(1).
pub(crate) fn median_without(sorted: &[f64], skip: usize) -> Option<f64> {
    let m = sorted.len().checked_sub(1)?;
    if m == 0 || skip > m {
        return None;
    }
    let at = |k: usize| if k < skip { sorted[k] } else { sorted[k + 1] };
    Some(if m % 2 == 1 {
        at(m / 2)
    } else {
        (at(m / 2 - 1) + at(m / 2)) / 2.0
    })
}

/// The median and MAD of `values` (reordered in place); `None` when empty.
pub(crate) fn median_mad(values: &mut [f64]) -> Option<(f64, f64)> {
    let med = median(values)?;
    for v in values.iter_mut() {
        *v = (*v - med).abs();
    }
    let mad = median(values)?;
    Some((med, mad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn median_without_matches_removing_the_element() {
        let sorted = [1.0, 2.0, 4.0, 8.0, 16.0];
        for skip in 0..sorted.len() {
            let mut rest: Vec<f64> = sorted
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, v)| *v)
                .collect();
            assert_eq!(
                median_without(&sorted, skip),
                median(&mut rest),
                "skip {skip}"
            );
        }
        assert_eq!(median_without(&[1.0], 0), None);
        assert_eq!(median_without(&[1.0, 5.0], 1), Some(1.0));
    }

    #[test]
    fn mad_ignores_one_outlier() {
        let (med, mad) = median_mad(&mut [1.0, 1.1, 0.9, 1.0, 100.0]).unwrap_or_default();
        assert_eq!(med, 1.0);
        assert!((mad - 0.1).abs() < 1e-12, "mad {mad}");
    }
}
