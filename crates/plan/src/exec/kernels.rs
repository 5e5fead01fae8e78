//! Element types and reduction kernels. The reference executor and the runtime use these
//! same functions, so for a given plan they produce the same bits.
//!
//! Integers wrap (as in NCCL); f16 and bf16 are combined in f32 and rounded back after each
//! operation; min and max ignore a NaN operand. `Avg` reduces like `Sum` and is divided by
//! the world size once, at the end ([`finish_avg`]).

use std::fmt::Debug;

use half::{bf16, f16};

use crate::spec::{Collective, CollectiveSpec, DType, ReduceOp};

/// A type the collectives move and reduce.
pub trait Element: Copy + Send + Sync + PartialEq + Debug + Default + 'static {
    const DTYPE: DType;
    /// A recognisable value for memory no op has written yet.
    const POISON: Self;
    fn combine(op: ReduceOp, a: Self, b: Self) -> Self;
    /// Divides by the world size (the last step of `Avg`).
    fn div_world(self, world: u32) -> Self;
    /// Converts a small integer (test data).
    fn from_i64(v: i64) -> Self;
    /// Converts a float, rounding (and for integers truncating and wrapping).
    fn from_f64(v: f64) -> Self;
    /// Converts to f64 (comparisons with tolerance).
    fn to_f64(self) -> f64;
}

macro_rules! float_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            const POISON: Self = -1.0e30 as $t;
            #[inline(always)]
            fn combine(op: ReduceOp, a: Self, b: Self) -> Self {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => a + b,
                    ReduceOp::Prod => a * b,
                    ReduceOp::Min => a.min(b),
                    ReduceOp::Max => a.max(b),
                }
            }
            fn div_world(self, world: u32) -> Self {
                self / world as $t
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
float_element!(f32, DType::F32);
float_element!(f64, DType::F64);

macro_rules! half_element {
    ($t:ty, $d:expr, $poison:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            const POISON: Self = $poison;
            #[inline(always)]
            fn combine(op: ReduceOp, a: Self, b: Self) -> Self {
                <$t>::from_f32(f32::combine(op, a.to_f32(), b.to_f32()))
            }
            fn div_world(self, world: u32) -> Self {
                <$t>::from_f32(self.to_f32() / world as f32)
            }
            fn from_i64(v: i64) -> Self {
                <$t>::from_f32(v as f32)
            }
            fn from_f64(v: f64) -> Self {
                <$t>::from_f64(v)
            }
            fn to_f64(self) -> f64 {
                self.to_f64()
            }
        }
    };
}
half_element!(f16, DType::F16, f16::MIN);
half_element!(bf16, DType::BF16, bf16::MIN);

macro_rules! int_element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            const POISON: Self = <$t>::MAX - 7;
            #[inline(always)]
            fn combine(op: ReduceOp, a: Self, b: Self) -> Self {
                match op {
                    ReduceOp::Sum | ReduceOp::Avg => a.wrapping_add(b),
                    ReduceOp::Prod => a.wrapping_mul(b),
                    ReduceOp::Min => a.min(b),
                    ReduceOp::Max => a.max(b),
                }
            }
            fn div_world(self, world: u32) -> Self {
                (self as i128 / world as i128) as $t
            }
            fn from_i64(v: i64) -> Self {
                v as $t
            }
            fn from_f64(v: f64) -> Self {
                (v as i64) as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
int_element!(i32, DType::I32);
int_element!(i64, DType::I64);
int_element!(u8, DType::U8);

/// `acc[i] = acc[i] ⊕ other[i]`. The operator is matched once, outside the loop, so each
/// loop body is a plain element-wise operation the compiler can vectorise.
pub fn reduce_into<T: Element>(op: ReduceOp, acc: &mut [T], other: &[T]) {
    assert_eq!(
        acc.len(),
        other.len(),
        "reduction operands differ in length"
    );
    #[inline(always)]
    fn apply<T: Element>(acc: &mut [T], other: &[T], op: ReduceOp) {
        for (a, b) in acc.iter_mut().zip(other) {
            *a = T::combine(op, *a, *b);
        }
    }
    match op {
        ReduceOp::Sum | ReduceOp::Avg => apply(acc, other, ReduceOp::Sum),
        ReduceOp::Prod => apply(acc, other, ReduceOp::Prod),
        ReduceOp::Min => apply(acc, other, ReduceOp::Min),
        ReduceOp::Max => apply(acc, other, ReduceOp::Max),
    }
}

/// `dst[i] = a[i] ⊕ b[i]`: the same bits as copying `a` into `dst` and then
/// [`reduce_into`] with `b`, in one pass over memory instead of two.
pub fn reduce_to<T: Element>(op: ReduceOp, dst: &mut [T], a: &[T], b: &[T]) {
    assert!(
        dst.len() == a.len() && a.len() == b.len(),
        "reduction operands differ in length"
    );
    #[inline(always)]
    fn apply<T: Element>(dst: &mut [T], a: &[T], b: &[T], op: ReduceOp) {
        for ((d, x), y) in dst.iter_mut().zip(a).zip(b) {
            *d = T::combine(op, *x, *y);
        }
    }
    match op {
        ReduceOp::Sum | ReduceOp::Avg => apply(dst, a, b, ReduceOp::Sum),
        ReduceOp::Prod => apply(dst, a, b, ReduceOp::Prod),
        ReduceOp::Min => apply(dst, a, b, ReduceOp::Min),
        ReduceOp::Max => apply(dst, a, b, ReduceOp::Max),
    }
}

/// Whether `rank`'s output holds a reduction that `Avg` must divide.
pub fn output_is_reduced(spec: &CollectiveSpec, rank: u32) -> bool {
    match spec.collective {
        Collective::AllReduce | Collective::ReduceScatter => true,
        Collective::Reduce => rank == spec.root,
        _ => false,
    }
}

/// The last step of an `Avg` reduction on one rank's output; does nothing for other ops.
pub fn finish_avg<T: Element>(spec: &CollectiveSpec, rank: u32, output: &mut [T]) {
    if spec.op == ReduceOp::Avg && output_is_reduced(spec, rank) {
        for x in output {
            *x = x.div_world(spec.world);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_semantics() {
        assert_eq!(u8::combine(ReduceOp::Sum, 200, 100), 44);
        assert_eq!(i32::combine(ReduceOp::Prod, i32::MAX, 2), -2);
        assert_eq!(f32::combine(ReduceOp::Min, f32::NAN, 1.0), 1.0);
        assert_eq!(f32::combine(ReduceOp::Max, 1.0, f32::NAN), 1.0);
        let a = f16::from_f32(1.0);
        let b = f16::from_f32(2.0);
        assert_eq!(f16::combine(ReduceOp::Sum, a, b), f16::from_f32(3.0));
        assert_eq!(bf16::from_i64(3).div_world(2), bf16::from_f32(1.5));
        assert_eq!(u8::from_i64(255).div_world(300), 0);
        assert_eq!((-7i64).div_world(2), -3);
    }

    #[test]
    fn reduce_into_all_ops() {
        let mut acc = vec![1i64, 5, -3];
        reduce_into(ReduceOp::Max, &mut acc, &[2, 4, -4]);
        assert_eq!(acc, vec![2, 5, -3]);
        reduce_into(ReduceOp::Prod, &mut acc, &[3, 1, 2]);
        assert_eq!(acc, vec![6, 5, -6]);
    }

    proptest::proptest! {
        /// One pass gives the bits of copy-then-reduce, for every operator and for NaNs,
        /// signed zeros and halves alike.
        #[test]
        fn reduce_to_is_copy_then_reduce(
            pairs in proptest::collection::vec((proptest::num::f32::ANY, proptest::num::f32::ANY), 0..64),
            op in 0usize..5,
        ) {
            let op = [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max, ReduceOp::Avg][op];
            let (a, b): (Vec<f32>, Vec<f32>) = pairs.into_iter().unzip();
            let mut want = a.clone();
            reduce_into(op, &mut want, &b);
            let mut got = vec![0.0f32; a.len()];
            reduce_to(op, &mut got, &a, &b);
            proptest::prop_assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            let (ha, hb): (Vec<bf16>, Vec<bf16>) = (
                a.iter().map(|x| bf16::from_f32(*x)).collect(),
                b.iter().map(|x| bf16::from_f32(*x)).collect(),
            );
            let mut want = ha.clone();
            reduce_into(op, &mut want, &hb);
            let mut got = vec![bf16::ZERO; ha.len()];
            reduce_to(op, &mut got, &ha, &hb);
            proptest::prop_assert_eq!(
                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}
