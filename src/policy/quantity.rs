//! `resource.Quantity` parsing and comparison with Kubernetes' exact semantics
//! (k8s.io/apimachinery/pkg/api/resource: `ParseQuantity`, `Quantity.Cmp`).
//!
//! No crate on crates.io parses quantities exactly as Kubernetes does, so this ports
//! `ParseQuantity`: the same scanner, the same suffixes, the same split between values kept
//! exactly (the int64 fast path) and values rounded up to a nano and capped at 2^63-1 (the
//! `inf.Dec` path). A parsed value is held exactly as sign, significant decimal digits and a
//! decimal exponent, so any two quantities compare exactly, however large or small.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Why a string is not a quantity; the messages are Kubernetes' own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseQuantityError {
    /// `ErrFormatWrong`
    FormatWrong,
    /// `ErrNumeric`
    Numeric,
    /// `ErrSuffix`
    Suffix,
}

impl fmt::Display for ParseQuantityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseQuantityError::FormatWrong => {
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            }
            ParseQuantityError::Numeric => "unable to parse quantity's numeric part",
            ParseQuantityError::Suffix => "unable to parse quantity's suffix",
        })
    }
}

impl std::error::Error for ParseQuantityError {}

/// An exact quantity: `(-1)^negative × 0.d1d2…dn × 10^exponent`... held as the integer of its
/// significant digits times a power of ten.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Quantity {
    negative: bool,
    /// Significant decimal digits (ASCII), no leading or trailing zeros; empty for zero.
    digits: Vec<u8>,
    /// The value is `digits × 10^exponent`.
    exponent: i64,
}

/// 2^63-1: no quantity parsed through the rounding path is larger in magnitude.
const MAX_ALLOWED: u128 = i64::MAX as u128;
/// Quantities are precise to 10^-9 (a nano).
const NANO_DIGITS: i64 = 9;
/// An int64 holds at least this many decimal digits (`maxInt64Factors`).
const MAX_INT64_FACTORS: i64 = 18;

impl Quantity {
    /// `resource.ParseQuantity`.
    pub fn parse(s: &str) -> Result<Self, ParseQuantityError> {
        if s.is_empty() {
            return Err(ParseQuantityError::FormatWrong);
        }
        if s == "0" {
            return Ok(Self::zero());
        }
        let scanned = scan(s)?;
        let suffix = interpret_suffix(scanned.suffix).ok_or(ParseQuantityError::Suffix)?;

        let digit_count = (scanned.num.len() + scanned.denom.len()) as i64;
        let denom_len = scanned.denom.len() as i64;
        match suffix {
            Suffix::Decimal(exponent) => {
                let precision = MAX_INT64_FACTORS - digit_count;
                let scale = exponent - denom_len;
                if precision >= 0 && scale >= -NANO_DIGITS {
                    // The int64 fast path: kept exactly, neither rounded nor capped.
                    let mut digits = scanned.num.as_bytes().to_vec();
                    digits.extend_from_slice(scanned.denom.as_bytes());
                    return Ok(Self::from_digits(!scanned.positive, digits, scale));
                }
            }
            Suffix::Binary(exponent) => {
                // `precision = 15 - len(num) - int32(float32(exponent)*3/10) - 1`
                let precision = 15 - scanned.num.len() as i64 - exponent * 3 / 10 - 1;
                if scanned.denom.is_empty() && precision >= 0 {
                    // Few enough digits that `num << exponent` fits an int64: exact.
                    let num: u128 = scanned
                        .num
                        .parse()
                        .map_err(|_| ParseQuantityError::Numeric)?;
                    let value = num << exponent;
                    return Ok(Self::from_digits(
                        !scanned.positive,
                        value.to_string().into_bytes(),
                        0,
                    ));
                }
            }
        }
        rounded(&scanned, suffix)
    }

    pub fn zero() -> Self {
        Self {
            negative: false,
            digits: Vec::new(),
            exponent: 0,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// Normalizes `digits × 10^exponent`: strips leading and trailing zeros.
    fn from_digits(negative: bool, mut digits: Vec<u8>, mut exponent: i64) -> Self {
        let leading = digits.iter().take_while(|&&d| d == b'0').count();
        digits.drain(..leading);
        let trailing = digits.iter().rev().take_while(|&&d| d == b'0').count();
        digits.truncate(digits.len() - trailing);
        exponent += trailing as i64;
        if digits.is_empty() {
            return Self::zero();
        }
        Self {
            negative,
            digits,
            exponent,
        }
    }

    /// Compares magnitudes.
    fn cmp_abs(&self, other: &Self) -> Ordering {
        match (self.is_zero(), other.is_zero()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
        // The position of the most significant digit decides, then the digits themselves
        // (equal-length prefixes compared, the longer one larger if they agree).
        let magnitude = |q: &Self| q.digits.len() as i128 + q.exponent as i128;
        magnitude(self)
            .cmp(&magnitude(other))
            .then_with(|| self.digits.cmp(&other.digits))
    }
}

impl Ord for Quantity {
    /// `Quantity.Cmp`: by value, whatever the notation (`1` = `1000m` = `1e3m`).
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_abs(other),
            (true, true) => other.cmp_abs(self),
        }
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl FromStr for Quantity {
    type Err = ParseQuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Quantity {
    /// The exact value in plain decimal notation (not Kubernetes' canonical form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        if self.negative {
            f.write_str("-")?;
        }
        let digits = std::str::from_utf8(&self.digits).map_err(|_| fmt::Error)?;
        if self.exponent >= 0 {
            write!(f, "{digits}{}", "0".repeat(self.exponent as usize))
        } else {
            let point = self.digits.len() as i64 + self.exponent;
            if point > 0 {
                let (int, frac) = digits.split_at(point as usize);
                write!(f, "{int}.{frac}")
            } else {
                write!(f, "0.{}{digits}", "0".repeat((-point) as usize))
            }
        }
    }
}

/// The pieces `parseQuantityString` finds.
struct Scanned<'a> {
    positive: bool,
    /// The integer digits without leading zeros, or "0".
    num: &'a str,
    /// The fraction digits.
    denom: &'a str,
    suffix: &'a str,
}

/// `parseQuantityString`: sign, digits, optional `.` and digits, then a suffix made of
/// `eEinumkKMGTP` characters, an optional sign and digits.
fn scan(s: &str) -> Result<Scanned<'_>, ParseQuantityError> {
    let bytes = s.as_bytes();
    let end = bytes.len();
    let mut pos = 0;
    let mut positive = true;
    match bytes.first() {
        Some(b'-') => {
            positive = false;
            pos += 1;
        }
        Some(b'+') => pos += 1,
        _ => {}
    }
    // Leading zeros.
    while pos < end && bytes[pos] == b'0' {
        pos += 1;
    }
    if pos >= end {
        return Ok(Scanned {
            positive,
            num: "0",
            denom: "",
            suffix: "",
        });
    }
    let num_start = pos;
    while pos < end && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    let mut num = &s[num_start..pos];
    if pos >= end {
        return Ok(Scanned {
            positive,
            num,
            denom: "",
            suffix: "",
        });
    }
    if num.is_empty() {
        num = "0";
    }
    let mut denom = "";
    if bytes[pos] == b'.' {
        pos += 1;
        let denom_start = pos;
        while pos < end && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &s[denom_start..pos];
        if pos >= end {
            return Ok(Scanned {
                positive,
                num,
                denom,
                suffix: "",
            });
        }
    }
    let suffix_start = pos;
    while pos < end && b"eEinumkKMGTP".contains(&bytes[pos]) {
        pos += 1;
    }
    if pos < end && matches!(bytes[pos], b'-' | b'+') {
        pos += 1;
    }
    while pos < end && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < end {
        return Err(ParseQuantityError::FormatWrong);
    }
    Ok(Scanned {
        positive,
        num,
        denom,
        suffix: &s[suffix_start..],
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suffix {
    /// × 10^n: the SI suffixes (`DecimalSI`) and `e`/`E` exponents (`DecimalExponent`).
    Decimal(i64),
    /// × 2^n: `Ki` … `Ei` (`BinarySI`).
    Binary(i64),
}

/// `suffixHandler.interpret`.
fn interpret_suffix(suffix: &str) -> Option<Suffix> {
    let decimal = match suffix {
        "n" => Some(-9),
        "u" => Some(-6),
        "m" => Some(-3),
        "" => Some(0),
        "k" => Some(3),
        "M" => Some(6),
        "G" => Some(9),
        "T" => Some(12),
        "P" => Some(15),
        "E" => Some(18),
        _ => None,
    };
    if let Some(exponent) = decimal {
        return Some(Suffix::Decimal(exponent));
    }
    let binary = match suffix {
        "Ki" => Some(10),
        "Mi" => Some(20),
        "Gi" => Some(30),
        "Ti" => Some(40),
        "Pi" => Some(50),
        "Ei" => Some(60),
        _ => None,
    };
    if let Some(exponent) = binary {
        return Some(Suffix::Binary(exponent));
    }
    let rest = suffix
        .strip_prefix('e')
        .or_else(|| suffix.strip_prefix('E'))?;
    if rest.is_empty() {
        return None;
    }
    // strconv.ParseInt(rest, 10, 64), then truncated to int32 as Kubernetes does.
    let parsed: i64 = rest.parse().ok()?;
    Some(Suffix::Decimal(i64::from(parsed as i32)))
}

/// The `inf.Dec` path: the exact value, rounded up (away from zero) to a whole nano and capped
/// at 2^63-1 in magnitude.
fn rounded(scanned: &Scanned<'_>, suffix: Suffix) -> Result<Quantity, ParseQuantityError> {
    let (decimal_exponent, binary_exponent) = match suffix {
        Suffix::Decimal(e) => (e, 0u32),
        Suffix::Binary(e) => (0, e as u32),
    };
    // The value is digits × 10^(decimal_exponent - len(denom)) × 2^binary_exponent.
    let mut digits = scanned.num.as_bytes().to_vec();
    digits.extend_from_slice(scanned.denom.as_bytes());
    let normalized =
        Quantity::from_digits(false, digits, decimal_exponent - scanned.denom.len() as i64);
    if normalized.is_zero() {
        return Ok(Quantity::zero());
    }
    let nanos = ceil_nanos(
        &normalized.digits,
        normalized.exponent + NANO_DIGITS,
        binary_exponent,
    );
    Ok(Quantity::from_digits(
        !scanned.positive,
        nanos.to_string().into_bytes(),
        -NANO_DIGITS,
    ))
}

/// `ceil(digits × 10^shift × 2^binary)`, capped at `MAX_ALLOWED` nanos. `digits` has no leading
/// or trailing zeros and is not empty. Linear in the number of digits whatever the exponents.
fn ceil_nanos(digits: &[u8], shift: i64, binary: u32) -> u128 {
    let cap = MAX_ALLOWED * 10u128.pow(NANO_DIGITS as u32);
    let len = digits.len() as i64;
    // At least 10^(len+shift-1) before the binary factor; the cap has 28 digits.
    if len + shift > 28 {
        return cap;
    }
    let parse = |ds: &[u8]| {
        ds.iter()
            .fold(0u128, |acc, d| acc * 10 + u128::from(d - b'0'))
    };
    let scale_up = |value: u128| value.checked_mul(1u128 << binary);
    if shift >= 0 {
        return parse(digits)
            .checked_mul(10u128.pow(shift as u32))
            .and_then(scale_up)
            .map_or(cap, |n| n.min(cap));
    }
    // Split into an integer part and a non-zero fraction of `fraction_len` digits.
    let fraction_len = -shift;
    let (integer, fraction) = if fraction_len < len {
        let (i, f) = digits.split_at((len - fraction_len) as usize);
        (parse(i), f)
    } else {
        (0, digits)
    };
    let Some(integer) = scale_up(integer) else {
        return cap;
    };
    // ceil(0.[zeros]fraction × 2^binary): the fraction is below 1 and not zero, so times 2^binary
    // (< 10^19) it is below 1, i.e. rounds up to 1, once 19 zeros lead it.
    let leading_zeros = fraction_len - fraction.len() as i64;
    let fraction_ceil = if binary == 0 || leading_zeros >= 19 {
        1
    } else {
        // Long multiplication of the fraction's digits by 2^binary, from the right; what carries
        // past the decimal point is the integer part.
        let factor = 1u128 << binary;
        let mut carry = 0u128;
        let mut remainder_nonzero = false;
        let padded = std::iter::repeat_n(0u8, leading_zeros as usize)
            .chain(fraction.iter().map(|d| d - b'0'));
        let padded: Vec<u8> = padded.collect();
        for &d in padded.iter().rev() {
            let product = u128::from(d) * factor + carry;
            remainder_nonzero |= !product.is_multiple_of(10);
            carry = product / 10;
        }
        carry + u128::from(remainder_nonzero)
    };
    integer
        .checked_add(fraction_ceil)
        .map_or(cap, |n| n.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn notation_does_not_change_the_value() {
        for (a, b) in [
            ("1", "1000m"),
            ("0.5", "500m"),
            ("1e3", "1k"),
            ("1Ki", "1024"),
            ("1Gi", "1073741824"),
            ("1.5Gi", "1536Mi"),
            ("129M", "129e6"),
            ("1E", "1e18"),
            ("100m", ".1"),
            ("0.1", "1e-1"),
            ("+5", "5"),
            ("-0", "0"),
            ("0.0", "0"),
        ] {
            assert_eq!(q(a).cmp(&q(b)), Ordering::Equal, "{a} = {b}");
        }
    }

    #[test]
    fn orders_by_value() {
        let ascending = [
            "-1Ei", "-2", "-1", "-1m", "0", "1n", "1u", "1m", "0.5", "1", "1.5", "1k", "1Ki", "1M",
            "1Mi", "129M", "128Mi", "1G", "1Gi", "8Ei", "1e100",
        ];
        for pair in ascending.windows(2) {
            assert!(q(pair[0]) < q(pair[1]), "{} < {}", pair[0], pair[1]);
            assert!(q(pair[1]) > q(pair[0]), "{} > {}", pair[1], pair[0]);
        }
        assert!(q("500m") < q("512Mi"));
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for s in [
            "", "abc", "1.2.3", "1 ", " 1", "1Kib", "1ki", "1e", "1i", "1.5.Gi", "--1", "1e1.5",
            "0x10", "1,000", "1e3m",
        ] {
            assert!(Quantity::parse(s).is_err(), "{s:?} parsed");
        }
        assert_eq!(
            Quantity::parse("1Q").unwrap_err(),
            ParseQuantityError::FormatWrong
        );
        assert_eq!(
            Quantity::parse("1ki").unwrap_err(),
            ParseQuantityError::Suffix
        );
    }

    #[test]
    fn rounds_up_to_a_nano_on_the_rounding_path() {
        assert_eq!(q("0.1n").to_string(), "0.000000001");
        assert_eq!(q("-0.1n").to_string(), "-0.000000001");
        assert_eq!(q("1e-1000000000").to_string(), "0.000000001");
        assert_eq!(q("1.5n").to_string(), "0.000000002");
    }

    #[test]
    fn caps_the_rounding_path_but_not_the_fast_path() {
        // 8Ei = 2^63 takes the rounding path (binary with many digits) and is capped.
        assert_eq!(q("8Ei").to_string(), "9223372036854775807");
        assert_eq!(q("16Ei"), q("8Ei"));
        // 1e100 is kept exactly by the int64 fast path.
        assert!(q("1e100") > q("8Ei"));
        // 19 digits leave the fast path: capped.
        assert_eq!(q("10000000000000000000").to_string(), "9223372036854775807");
    }

    #[test]
    fn huge_inputs_stay_cheap() {
        let long = format!("0.{}1", "0".repeat(100_000));
        assert_eq!(q(&long).to_string(), "0.000000001");
        let big = format!("1{}", "0".repeat(100_000));
        assert_eq!(q(&big).to_string(), "9223372036854775807");
    }
}
