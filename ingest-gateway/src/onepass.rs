//! The fast reader: one pass over a batch's bytes, straight into each
//! event's parts, the motion samples into `f32` axes on the way.
//!
//! The generic path ([`crate::batch::parse_batch`] then
//! [`crate::validate::Validator::event`]) reads the motion bytes three
//! times: the batch's `RawValue` per event, the event's `RawValue` per
//! sample array, then [`crate::validate::parse_samples`]. Motion is most of
//! an event's bytes, so this reader reads everything once.
//!
//! It reads only what it is sure to read exactly as the generic path does,
//! and gives up (`None`) on anything else: a string with an escape, an
//! integer of more than 19 digits, a nesting deeper than [`MAX_DEPTH`], a
//! duplicate key, a missing field, a value of an unexpected type, too many
//! events or samples, any syntax error. [`crate::pipeline::prepare`] then
//! runs the generic path on the same bytes, so every error and every
//! rejection keeps its one wording. What it accepts, it reads to the same
//! values (numbers correctly rounded, like `str::parse`), which the
//! proptests and the fuzz target check against the generic path byte for
//! byte.

use std::borrow::Cow;

use context_schemas::Axes3;

use crate::validate::{CheckedSignals, EventParts, MotionParts, Rejection, Scalar};

/// Deepest nesting of an unknown field's value this reader skips; deeper
/// ones go to the generic path (serde_json's own limit is 128).
pub const MAX_DEPTH: usize = 32;

/// A batch as this reader read it.
#[derive(Debug)]
pub(crate) struct ReadBatch<'a> {
    /// The batch's JSON without its events (`"events":[]`), for the generic
    /// envelope reader: the envelope is a few hundred bytes, so its checks
    /// and their wording stay in one place.
    pub envelope: String,
    pub events: Vec<ReadEvent<'a>>,
}

/// One event: its parts, and its JSON as sent (for a dead letter).
#[derive(Debug)]
pub(crate) struct ReadEvent<'a> {
    pub parts: EventParts<'a, ReadMotion>,
    pub raw: &'a str,
}

/// Motion with its samples already read.
#[derive(Debug)]
pub(crate) struct ReadMotion {
    sample_rate_hz: f64,
    accelerometer: Axes3,
    gyroscope: Axes3,
}

impl MotionParts for ReadMotion {
    fn sample_rate_hz(&self) -> f64 {
        self.sample_rate_hz
    }

    fn axes(self, _max: usize) -> Result<(Axes3, Axes3), Rejection> {
        // The limit was enforced while reading.
        Ok((self.accelerometer, self.gyroscope))
    }
}

/// Reads a whole decompressed body, or `None` when the generic path must.
pub(crate) fn read(json: &[u8], max_events: usize, max_samples: usize) -> Option<ReadBatch<'_>> {
    let text = std::str::from_utf8(json).ok()?;
    let mut r = Reader::new(text);
    r.eat(b'{')?;
    let mut envelope = String::with_capacity(1024);
    envelope.push('{');
    let mut events = None;
    loop {
        r.ws();
        let pair_start = r.i;
        let key = r.string()?;
        r.eat(b':')?;
        if key == "events" {
            if events.is_some() {
                return None;
            }
            events = Some(r.events(max_events, max_samples)?);
        } else {
            r.skip_value(0)?;
            envelope.push_str(&text[pair_start..r.i]);
            envelope.push(',');
        }
        match r.peek()? {
            b',' => r.i += 1,
            b'}' => {
                r.i += 1;
                break;
            }
            _ => return None,
        }
    }
    r.ws();
    if r.i != json.len() {
        return None;
    }
    envelope.push_str("\"events\":[]}");
    Some(ReadBatch {
        envelope,
        events: events?,
    })
}

/// A JSON number as read: its decimal digits when they fit in a `u64`.
#[derive(Debug, Clone, Copy)]
struct Number {
    negative: bool,
    /// The digits without the point, when `fits`.
    mantissa: u64,
    /// The power of ten to scale `mantissa` by.
    exp10: i32,
    fits: bool,
    /// No fraction and no exponent.
    integer: bool,
    start: usize,
    end: usize,
}

/// Exact powers of ten in `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// `10^-k` rounded to `f64`.
const NEG_POW10: [f64; 23] = [
    1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14, 1e-15, 1e-16, 1e-17,
    1e-18, 1e-19, 1e-20, 1e-21, 1e-22,
];

impl Number {
    /// `mantissa × 10^exp10` correctly rounded, when one multiplication or
    /// division of exact operands gives it: a mantissa of at most 2^53 and a
    /// power of at most 10^22 are both exact `f64`s, and IEEE arithmetic
    /// rounds the one operation correctly (Clinger's fast path).
    fn exact_f64(&self) -> Option<f64> {
        if !self.fits || self.mantissa > 1 << 53 || self.exp10.unsigned_abs() > 22 {
            return None;
        }
        let m = self.mantissa as f64;
        let p = POW10[self.exp10.unsigned_abs() as usize];
        let v = if self.exp10 < 0 { m / p } else { m * p };
        Some(if self.negative { -v } else { v })
    }

    fn f64(&self, text: &str) -> Option<f64> {
        let v = match self.exact_f64() {
            Some(v) => v,
            None => text[self.start..self.end].parse::<f64>().ok()?,
        };
        // serde_json refuses a number out of range; so does this reader.
        v.is_finite().then_some(v)
    }

    /// The number as `str::parse::<f32>` reads it (correctly rounded),
    /// through `f64` whenever that cannot round differently.
    ///
    /// `v`, the mantissa times the rounded power of ten (or its rounded
    /// reciprocal), is off the real value by at most 4 f64 steps: three
    /// roundings (mantissa, power, product), each at most half a step of
    /// its own value, a relative 2^-53, so at most one step of the result.
    /// In f32's normal range the low 29 bits of an f64's mantissa are the
    /// position between two neighbouring f32s, `1 << 28` their midpoint.
    /// When the midpoint is more than 4 steps from `v`, the real value and
    /// `v` lie on the same side of it and round to the same f32. Else (2^-25
    /// of all values), or outside the range: the standard parser on the
    /// number's text.
    fn f32(&self, text: &str) -> Option<f32> {
        if self.fits {
            if let Some(f) = certain_f32(self.mantissa, self.exp10, self.negative) {
                return Some(f);
            }
            if self.mantissa == 0 {
                return Some(if self.negative { -0.0 } else { 0.0 });
            }
        }
        text[self.start..self.end].parse::<f32>().ok()
    }

    /// The signal value serde_json and [`Scalar`]'s visitor make of it.
    fn scalar(&self, text: &str) -> Option<Scalar<'static>> {
        if !self.integer {
            return self.f64(text).map(Scalar::Float);
        }
        if !self.fits {
            return None;
        }
        Some(if self.negative {
            // serde_json: `-0` and anything below i64::MIN are floats.
            let neg = (self.mantissa as i64).wrapping_neg();
            if neg >= 0 {
                Scalar::Float(-(self.mantissa as f64))
            } else {
                Scalar::Int(neg)
            }
        } else {
            i64::try_from(self.mantissa).map_or(Scalar::Float(self.mantissa as f64), Scalar::Int)
        })
    }

    /// The value serde_json deserialises an `f64` field to.
    fn as_f64_field(&self, text: &str) -> Option<f64> {
        match self.scalar(text)? {
            Scalar::Int(i) => Some(i as f64),
            Scalar::Float(f) => Some(f),
            _ => None,
        }
    }
}

/// `mantissa × 10^exp10` through `f64`: the mantissa (below 2^63, so it
/// converts as a signed integer, one instruction) times the rounded power
/// of ten or its rounded reciprocal. `None` past 10^±22 or 2^63.
fn scaled(mantissa: u64, exp10: i32) -> Option<f64> {
    let k = exp10.unsigned_abs() as usize;
    (k <= 22 && mantissa < 1 << 63).then(|| mantissa as i64 as f64 * if exp10 < 0 { NEG_POW10[k] } else { POW10[k] })
}

/// The `f32` nearest `mantissa × 10^exp10` (negated when `negative`), when
/// [`scaled`] can tell it for certain (see [`Number::f32`]): `None` near an
/// `f32` midpoint, outside f32's normal range, or past what `scaled` takes.
#[inline]
fn certain_f32(mantissa: u64, exp10: i32, negative: bool) -> Option<f32> {
    let v = scaled(mantissa, exp10)?;
    const MIDPOINT: u64 = 1 << 28;
    let from_midpoint = (v.to_bits() & 0x1FFF_FFFF).abs_diff(MIDPOINT);
    if from_midpoint > 8 && (f32::MIN_POSITIVE as f64..=f32::MAX as f64).contains(&v) {
        let f = v as f32;
        Some(if negative { -f } else { f })
    } else {
        None
    }
}

struct Reader<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    /// Sample axes being read (see [`Reader::samples`]).
    scratch: Axes3,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Reader {
            text,
            b: text.as_bytes(),
            i: 0,
            scratch: Axes3::default(),
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next byte that is not whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// Either `,` (true, more follows) or `close` (false).
    fn next_or_close(&mut self, close: u8) -> Option<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Some(true)
            }
            c if c == close => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A string without escapes, borrowed. The body is known to be UTF-8
    /// and `"` is ASCII, so the slice is on character boundaries.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match *self.b.get(self.i)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        self.i += 1;
        Some(&self.text[start..self.i - 1])
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.b[self.i..].starts_with(word).then(|| self.i += word.len())
    }

    fn number(&mut self) -> Option<Number> {
        self.ws();
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        i += usize::from(negative);
        // Every digit goes into the mantissa, wrapping: it is exact when
        // the digits after the leading zeros are at most 19 (< 2^64).
        let mut mantissa = 0u64;
        let first_digit = i;
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if let Some(b'0'..=b'9') = b.get(i) {
                    return None;
                }
            }
            Some(b'1'..=b'9') => {
                digit_run(b, &mut i, &mut mantissa);
            }
            _ => return None,
        }
        let mut exp10 = 0i32;
        let mut integer = true;
        let mut point = 0;
        if b.get(i) == Some(&b'.') {
            integer = false;
            i += 1;
            let fraction = digit_run(b, &mut i, &mut mantissa);
            // No digits, or so many that the exponent arithmetic below
            // would need capping: the generic path reads it.
            if fraction == 0 || fraction > 10_000 {
                return None;
            }
            point = 1;
            exp10 = -(fraction as i32);
        }
        let text = &b[first_digit..i];
        let mut significant = text.len() - point;
        if significant > 19 {
            // Leading zeros (of 0.000…) add nothing to the mantissa.
            significant -= text
                .iter()
                .take_while(|&&c| c == b'0' || c == b'.')
                .filter(|&&c| c == b'0')
                .count();
        }
        let fits = significant <= 19;
        if let Some(b'e' | b'E') = b.get(i) {
            integer = false;
            i += 1;
            let negative_exp = b.get(i) == Some(&b'-');
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            let first = i;
            let mut e = 0i32;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                if e > 10_000 {
                    return None;
                }
                e = e * 10 + i32::from(d - b'0');
                i += 1;
            }
            if i == first {
                return None;
            }
            exp10 += if negative_exp { -e } else { e };
        }
        self.i = i;
        Some(Number {
            negative,
            mantissa,
            exp10,
            fits,
            integer,
            start,
            end: i,
        })
    }

    /// One sample value. The common spelling, `-0.0123…` with at most 18
    /// significant digits and no exponent, is read here in one go, eight
    /// digits at a time; anything else (an exponent, more digits, a value
    /// close to an f32 midpoint, text that is not a number) goes through
    /// [`Reader::number`] and [`Number::f32`] from the same position.
    #[inline]
    fn sample(&mut self) -> Option<f32> {
        self.ws();
        let (b, start) = (self.b, self.i);
        let mut i = start;
        let negative = b.get(i) == Some(&b'-');
        i += usize::from(negative);
        let mut mantissa = 0u64;
        let mut significant = 0;
        let mut exp10 = 0usize;
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => significant = digit_run(b, &mut i, &mut mantissa),
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            let first = i;
            if mantissa == 0 {
                while b.get(i) == Some(&b'0') {
                    i += 1;
                }
            }
            let n = digit_run(b, &mut i, &mut mantissa);
            significant += n;
            exp10 = i - first;
        }
        // Ends here (no exponent, no second point, no digit after a lone
        // `0`) and has digits after its point, if any: a JSON number.
        let complete = !matches!(b.get(i), Some(b'0'..=b'9' | b'e' | b'E' | b'.')) && b[i - 1] != b'.';
        if complete && significant <= 18 && exp10 <= 22 {
            if let Some(f) = certain_f32(mantissa, -(exp10 as i32), negative) {
                self.i = i;
                return Some(f);
            }
        }
        self.number()?.f32(self.text)
    }

    /// Any JSON value, checked and skipped.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|r, _| r.skip_value(depth + 1)),
            b'[' => {
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    if !self.next_or_close(b']')? {
                        return Some(());
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// `null`, consumed: true.
    fn null(&mut self) -> Option<bool> {
        Some(self.peek()? == b'n' && self.literal(b"null").is_some())
    }

    /// `null` as `None`, else the value `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.null()? {
            Some(None)
        } else {
            read(self).map(Some)
        }
    }

    /// An object, its fields in order: `field` reads each value after its key.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            field(self, key)?;
            if !self.next_or_close(b'}')? {
                return Some(());
            }
        }
    }

    fn events(&mut self, max_events: usize, max_samples: usize) -> Option<Vec<ReadEvent<'a>>> {
        self.eat(b'[')?;
        let mut events = Vec::with_capacity(64);
        if self.peek()? == b']' {
            self.i += 1;
            return Some(events);
        }
        loop {
            if events.len() == max_events {
                return None;
            }
            self.ws();
            let start = self.i;
            let parts = self.event(max_samples)?;
            events.push(ReadEvent {
                parts,
                raw: &self.text[start..self.i],
            });
            if !self.next_or_close(b']')? {
                return Some(events);
            }
        }
    }

    fn event(&mut self, max_samples: usize) -> Option<EventParts<'a, ReadMotion>> {
        let (mut event_id, mut timestamp, mut signals, mut motion) = (None, None, None, None);
        let mut unknown_fields = 0;
        self.object(|r, key| match key {
            "event_id" => set_once(&mut event_id, r.string()?),
            "timestamp" => set_once(&mut timestamp, r.string()?),
            "signals" => set_once(&mut signals, r.signals()?),
            "motion" => set_once(&mut motion, r.nullable(|r| r.motion(max_samples))?),
            _ => {
                unknown_fields += 1;
                r.skip_value(0)
            }
        })?;
        let motion = motion.flatten();
        Some(EventParts {
            event_id: Cow::Borrowed(event_id?),
            timestamp: Cow::Borrowed(timestamp?),
            signals: signals.unwrap_or_default(),
            unknown_fields: unknown_fields + motion.as_ref().map_or(0, |(_, unknown)| *unknown),
            motion: motion.map(|(m, _)| m),
        })
    }

    fn signals(&mut self) -> Option<CheckedSignals> {
        let mut out = CheckedSignals::default();
        self.object(|r, name| {
            let value = match r.peek()? {
                b'"' => Scalar::Str(Cow::Borrowed(r.string()?)),
                b't' => r.literal(b"true").map(|()| Scalar::Bool(true))?,
                b'f' => r.literal(b"false").map(|()| Scalar::Bool(false))?,
                b'n' => r.literal(b"null").map(|()| Scalar::Null)?,
                _ => r.number()?.scalar(r.text)?,
            };
            out.add(name, value);
            Some(())
        })?;
        Some(out)
    }

    /// The motion object and how many of its fields are unknown.
    fn motion(&mut self, max_samples: usize) -> Option<(ReadMotion, usize)> {
        let (mut rate, mut accelerometer, mut gyroscope, mut unknown) = (None, None, None, 0);
        self.object(|r, key| match key {
            "sample_rate_hz" => set_once(&mut rate, r.number()?.as_f64_field(r.text)?),
            "accelerometer" => set_once(&mut accelerometer, r.nullable(|r| r.samples(max_samples))?),
            "gyroscope" => set_once(&mut gyroscope, r.nullable(|r| r.samples(max_samples))?),
            _ => {
                unknown += 1;
                r.skip_value(0)
            }
        })?;
        Some((
            ReadMotion {
                sample_rate_hz: rate?,
                accelerometer: accelerometer.flatten().unwrap_or_default(),
                gyroscope: gyroscope.flatten().unwrap_or_default(),
            },
            unknown,
        ))
    }

    /// `[[x, y, z], ...]` into axes: finite `f32`s, at most `max` samples.
    fn samples(&mut self, max: usize) -> Option<Axes3> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(Axes3::default());
        }
        // Read into the reader's scratch axes, grown once per body, then
        // copied out at their exact size: no growth steps per array, and no
        // capacity reserved ahead that a one-sample array would not fill.
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.x.clear();
        scratch.y.clear();
        scratch.z.clear();
        let read = self.samples_into(max, &mut scratch);
        let axes = read.map(|()| Axes3 {
            x: scratch.x.clone(),
            y: scratch.y.clone(),
            z: scratch.z.clone(),
        });
        self.scratch = scratch;
        axes
    }

    fn samples_into(&mut self, max: usize, axes: &mut Axes3) -> Option<()> {
        loop {
            if axes.x.len() == max {
                return None;
            }
            self.eat(b'[')?;
            let x = self.sample()?;
            self.eat(b',')?;
            let y = self.sample()?;
            self.eat(b',')?;
            let z = self.sample()?;
            self.eat(b']')?;
            if !(x.is_finite() && y.is_finite() && z.is_finite()) {
                return None;
            }
            axes.x.push(x);
            axes.y.push(y);
            axes.z.push(z);
            if !self.next_or_close(b']')? {
                return Some(());
            }
        }
    }
}

/// `10^n` for `n` up to 8.
const POW10_U64: [u64; 9] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];

/// Reads the digits at `i` into `mantissa` (wrapping past 19 digits), eight
/// at a time: the count of leading digits of an 8-byte word comes from a
/// mask, so a run's length costs no branch per digit. Returns the count.
fn digit_run(b: &[u8], i: &mut usize, mantissa: &mut u64) -> usize {
    let first = *i;
    while let Some(eight) = b.get(*i..*i + 8) {
        let word = u64::from_le_bytes(eight.try_into().expect("eight bytes"));
        // Per byte: its value minus '0' is 0..=9 for a digit; adding 0x76
        // sets the high bit of anything else (a carry only disturbs the
        // bytes after the first non-digit, which are not counted).
        let t = word ^ 0x3030_3030_3030_3030;
        let other = (t.wrapping_add(0x7676_7676_7676_7676) | t) & 0x8080_8080_8080_8080;
        let n = (other.trailing_zeros() / 8) as usize;
        if n > 0 {
            // The n digits moved to the top, '0's below them.
            let top = (word << (8 * (8 - n))) | 0x3030_3030_3030_3030u64.checked_shr(8 * n as u32).unwrap_or(0);
            *mantissa = mantissa
                .wrapping_mul(POW10_U64[n])
                .wrapping_add(eight_digits_value(top));
            *i += n;
        }
        if n < 8 {
            return *i - first;
        }
    }
    while let Some(&d @ b'0'..=b'9') = b.get(*i) {
        *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
        *i += 1;
    }
    *i - first
}

/// The value of eight ASCII digits read little-endian (the first digit in
/// the lowest byte): pairs, then quadruples, then the eight, each step
/// one multiplication of packed lanes.
fn eight_digits_value(word: u64) -> u64 {
    let v = word - 0x3030_3030_3030_3030;
    // Each 16-bit lane's low byte: 10 × first + second digit of a pair.
    let v = (v * 10) + (v >> 8);
    // Lanes 0 and 2 (pairs 1 and 3) and lanes 1 and 3 (pairs 2 and 4),
    // weighted so that the sum lands in the upper 32 bits.
    const LANES: u64 = 0x0000_00FF_0000_00FF;
    let a = (v & LANES).wrapping_mul(100 + (1_000_000 << 32));
    let b = ((v >> 16) & LANES).wrapping_mul(1 + (10_000 << 32));
    (a.wrapping_add(b)) >> 32
}

/// Sets a field, or gives up on a duplicate (serde refuses it).
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(value);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn num(text: &str) -> Number {
        let mut r = Reader::new(text);
        let n = r.number().unwrap_or_else(|| panic!("`{text}` is a number"));
        assert_eq!(n.end, text.len(), "{text}");
        n
    }

    #[test]
    fn eight_digits_at_once() {
        let word = |s: &str| u64::from_le_bytes(s.as_bytes().try_into().unwrap());
        assert_eq!(eight_digits_value(word("01234567")), 1_234_567);
        assert_eq!(eight_digits_value(word("99999999")), 99_999_999);
        assert_eq!(eight_digits_value(word("10000000")), 10_000_000);
        // A run stops at the first byte that is no digit, whatever follows.
        for bad in ["0123456.", "0123456/", "0123456:", "0123456a", "1234567 "] {
            let (mut i, mut m) = (0, 0u64);
            assert_eq!(digit_run(bad.as_bytes(), &mut i, &mut m), 7, "{bad}");
        }
        // Runs of every length, with every kind of byte after them.
        for len in 0..=20 {
            for after in ["", ",", "]", ".5", "e3", "\u{e9}", ":"] {
                let digits: String = (0..len).map(|k| char::from(b'1' + (k * 7 % 9) as u8)).collect();
                let text = format!("{digits}{after}");
                let (mut i, mut m) = (0, 0u64);
                assert_eq!(digit_run(text.as_bytes(), &mut i, &mut m), len, "{text}");
                if len <= 19 {
                    assert_eq!(m, digits.parse::<u64>().unwrap_or(0), "{text}");
                }
            }
        }
        // A sample that is not a JSON number is not read as one.
        for bad in ["01", "1.", "-", "1.5.3", "-.5", "0x1"] {
            let t = format!("{bad},");
            let mut r = Reader::new(&t);
            let read = r.sample().is_some() && r.peek() == Some(b',');
            assert!(!read, "`{bad}`");
        }
    }

    #[test]
    fn numbers_follow_the_json_grammar() {
        for bad in ["01", "-", "1.", ".5", "+1", "1e", "1e+", "-a", "1.e5"] {
            let mut r = Reader::new(bad);
            let whole = r.number().is_some_and(|n| n.end == bad.len());
            assert!(!whole, "`{bad}` is not a JSON number");
        }
        assert_eq!(num("-0").scalar("-0"), Some(Scalar::Float(-0.0)));
        assert_eq!(num("0").scalar("0"), Some(Scalar::Int(0)));
        assert_eq!(num("-12").scalar("-12"), Some(Scalar::Int(-12)));
        let big = "9999999999999999999";
        assert_eq!(num(big).scalar(big), Some(Scalar::Float(9999999999999999999.0)));
        assert_eq!(num("12345678901234567890").scalar("12345678901234567890"), None);
        assert_eq!(num("1.5e2").scalar("1.5e2"), Some(Scalar::Float(150.0)));
        assert_eq!(num("1e400").scalar("1e400"), None, "out of range");
        // A fraction of 20,000 zeros, then an exponent that would cancel a
        // capped count: given up, not read as 0.5 × 10^2.
        let long = format!("0.{}5e20002", "0".repeat(20_000));
        let mut r = Reader::new(&long);
        assert!(r.number().is_none());
        let mut r = Reader::new(&long);
        assert!(r.sample().is_none());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 20_000, ..Default::default() })]

        /// Decimals of up to 22 digits with any exponent, as the standard
        /// parser reads them, both as `f32` and as `f64`.
        #[test]
        fn numbers_read_as_the_standard_parser_reads_them(
            negative: bool,
            int in "0|[1-9][0-9]{0,20}",
            fraction in proptest::option::of("[0-9]{1,22}"),
            exp in proptest::option::of(-60i32..60),
        ) {
            let text = format!(
                "{}{int}{}{}",
                if negative { "-" } else { "" },
                fraction.map(|f| format!(".{f}")).unwrap_or_default(),
                exp.map(|e| format!("e{e}")).unwrap_or_default()
            );
            let n = num(&text);
            let want32 = text.parse::<f32>().unwrap();
            proptest::prop_assert_eq!(n.f32(&text).map(f32::to_bits), Some(want32.to_bits()), "{}", text);
            // The sample reader, with what may follow a sample.
            for follow in [",", "]", " ,", ""] {
                let t = format!("{text}{follow}");
                let mut r = Reader::new(&t);
                proptest::prop_assert_eq!(r.sample().map(f32::to_bits), Some(want32.to_bits()), "{}", t);
                proptest::prop_assert_eq!(r.i, text.len(), "{}", t);
            }
            let want64 = text.parse::<f64>().unwrap();
            let got64 = n.f64(&text).map(f64::to_bits);
            proptest::prop_assert_eq!(got64, want64.is_finite().then_some(want64.to_bits()), "{}", text);
        }
    }

    #[test]
    fn f32_matches_the_standard_parser_also_on_midpoints() {
        let check = |text: &str| {
            let want = text.parse::<f32>().unwrap();
            let got = num(text).f32(text).unwrap();
            assert_eq!(got.to_bits(), want.to_bits(), "{text}");
        };
        for text in [
            "0",
            "-0",
            "0.1",
            "-0.98765433",
            "3.4028235e38",
            "1e-45",
            "1.17549435e-38",
            "123456789012",
        ] {
            check(text);
        }
        // Decimals whose f64 is exactly an f32 midpoint: rounding through
        // f64 would round twice; the reader must notice and parse exactly.
        let mut hazards = 0;
        // Between 8 and 16 a 16-digit decimal is closer than half an f64
        // step to any value, so `{mid:.15}` reads back as exactly `mid`.
        for bits in (0x4100_0000u32..0x4100_0000 + 200_000).step_by(7) {
            let lo = f32::from_bits(bits) as f64;
            let hi = f32::from_bits(bits + 1) as f64;
            let mid = (lo + hi) / 2.0;
            // And values a few f64 steps either side of the midpoint.
            let near = |d: i64| f64::from_bits(mid.to_bits().wrapping_add_signed(d));
            let texts = [format!("{mid:.15}"), format!("{mid:.14}"), format!("{mid:e}")]
                .into_iter()
                .chain([-9, -5, -1, 1, 5, 9].map(|d| format!("{:e}", near(d))));
            for text in texts {
                let n = num(&text);
                if n.fits && scaled(n.mantissa, n.exp10) == Some(mid) {
                    hazards += 1;
                }
                check(&text);
            }
        }
        assert!(hazards > 0, "the loop must meet at least one double-rounding case");
    }
}
