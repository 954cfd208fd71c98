//! The features of one motion window. Pure functions: the same window gives
//! the same vector on every machine.
//!
//! Feature version 2, made for phones (acceleration in g with gravity, as
//! Core Motion reports it; rotation rate in rad/s):
//! 1. each axis is low-pass filtered below [`FeatureSpec::cutoff_hz`]
//!    (a windowed-sinc FIR) when the window's rate is above the model's, so
//!    that a vibration above the model's Nyquist frequency cannot alias into
//!    a walking cadence, then resampled to [`FeatureSpec::rate_hz`];
//! 2. gravity is the mean acceleration vector; each sample is split into its
//!    component along gravity (vertical) and the rest (horizontal), and the
//!    rotation rate likewise. Six channels: acceleration magnitude,
//!    vertical, horizontal; rotation rate magnitude, about the vertical
//!    (absolute), about the horizontal. None of them depends on how the
//!    phone is turned, nor on the sign convention of the axes;
//! 3. per channel: mean, standard deviation, interquartile range, 10th and
//!    90th percentile, mean absolute jerk (first difference per second),
//!    dominant frequency (0 for a constant channel) and the share of power
//!    in each band of [`FeatureSpec::bands`];
//! 4. the gravity's magnitude, the correlation of the vertical and
//!    horizontal channels, the tilt of each sample from gravity (mean and
//!    standard deviation), and the gravity's direction in the phone's frame
//!    (x, y, z of its unit vector): the only features that depend on how the
//!    phone is held, and the only way to tell lying from standing while
//!    still. A phone held otherwise than in training changes them: see
//!    docs/enrich-activity.md.
//!
//! Windows shorter than [`FeatureSpec::min_seconds`] have too little of a
//! gait cycle to be told apart: the tagger answers `unknown` for them.

use std::f64::consts::PI;

use context_schemas::Axes3;

/// What a model expects: its feature version, rate, filter, bands and the
/// shortest window. Stored in the model artifact; a model refuses features
/// made with another spec.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    /// Changes whenever the features' definition does.
    pub version: u32,
    pub rate_hz: f64,
    /// The anti-alias filter's cutoff, applied before downsampling.
    pub cutoff_hz: f64,
    /// Frequency bands in Hz, `[low, high)`.
    pub bands: Vec<(f64, f64)>,
    /// Windows shorter than this are not tagged (`too_short`).
    pub min_seconds: f64,
}

/// The version [`FeatureSpec::default`] makes.
pub const FEATURE_VERSION: u32 = 2;

impl Default for FeatureSpec {
    fn default() -> Self {
        FeatureSpec {
            version: FEATURE_VERSION,
            rate_hz: 25.0,
            cutoff_hz: 10.0,
            bands: vec![(0.0, 0.7), (0.7, 1.5), (1.5, 3.0), (3.0, 6.0), (6.0, 12.5)],
            min_seconds: 2.0,
        }
    }
}

const CHANNELS: [&str; 6] = [
    "acc_mag",
    "acc_vert",
    "acc_horiz",
    "gyr_mag",
    "gyr_vert_abs",
    "gyr_horiz",
];
const STATS: [&str; 7] = ["mean", "std", "iqr", "p10", "p90", "jerk_mean_abs", "dominant_hz"];
const EXTRAS: [&str; 14] = [
    "gravity_norm",
    "corr_vert_horiz",
    "tilt_mean",
    "tilt_std",
    "acc_hf_std",
    "gravity_dir_x",
    "gravity_dir_y",
    "gravity_dir_z",
    "gravity_dir_xx",
    "gravity_dir_yy",
    "gravity_dir_zz",
    "gravity_dir_xy",
    "gravity_dir_xz",
    "gravity_dir_yz",
];

impl FeatureSpec {
    /// The name of every feature, in vector order.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for c in CHANNELS {
            for s in STATS {
                names.push(format!("{c}_{s}"));
            }
            for (lo, hi) in &self.bands {
                names.push(format!("{c}_band_{lo}_{hi}_hz"));
            }
        }
        names.extend(EXTRAS.iter().map(|e| (*e).to_owned()));
        names
    }

    /// The feature vector of a window sampled at `rate_hz`.
    pub fn extract(&self, accelerometer: &Axes3, gyroscope: &Axes3, rate_hz: f64) -> Vec<f64> {
        let to = |v: &[f32]| {
            if rate_hz > self.rate_hz {
                let filtered = lowpass(v, rate_hz, self.cutoff_hz.min(0.5 * self.rate_hz));
                resample_f64(&filtered, rate_hz, self.rate_hz)
            } else {
                resample(v, rate_hz, self.rate_hz)
            }
        };
        let a = [to(&accelerometer.x), to(&accelerometer.y), to(&accelerometer.z)];
        let w = [to(&gyroscope.x), to(&gyroscope.y), to(&gyroscope.z)];
        let n = a.iter().map(Vec::len).min().unwrap_or(0);
        let m = w.iter().map(Vec::len).min().unwrap_or(0);
        let g = [mean(&a[0][..n]), mean(&a[1][..n]), mean(&a[2][..n])];
        let g_norm = (g[0] * g[0] + g[1] * g[1] + g[2] * g[2]).sqrt();
        let up = if g_norm > 1e-6 {
            [g[0] / g_norm, g[1] / g_norm, g[2] / g_norm]
        } else {
            [0.0, 0.0, 0.0]
        };
        let split = |axes: &[Vec<f64>; 3], len: usize| -> (Vec<f64>, Vec<f64>, Vec<f64>) {
            let (mut mag, mut vert, mut horiz) = (
                Vec::with_capacity(len),
                Vec::with_capacity(len),
                Vec::with_capacity(len),
            );
            for ((x, y), z) in axes[0].iter().zip(&axes[1]).zip(&axes[2]).take(len) {
                let v = [*x, *y, *z];
                let along = v[0] * up[0] + v[1] * up[1] + v[2] * up[2];
                let norm2 = v[0] * v[0] + v[1] * v[1] + v[2] * v[2];
                mag.push(norm2.sqrt());
                vert.push(along);
                horiz.push((norm2 - along * along).max(0.0).sqrt());
            }
            (mag, vert, horiz)
        };
        let (a_mag, a_vert, a_horiz) = split(&a, n);
        let (w_mag, w_vert, w_horiz) = split(&w, m);
        let w_vert_abs: Vec<f64> = w_vert.iter().map(|v| v.abs()).collect();
        let mut out = Vec::with_capacity(CHANNELS.len() * (STATS.len() + self.bands.len()) + EXTRAS.len());
        for channel in [&a_mag, &a_vert, &a_horiz, &w_mag, &w_vert_abs, &w_horiz] {
            self.channel(channel, &mut out);
        }
        out.push(g_norm);
        out.push(correlation(&a_vert, &a_horiz));
        let tilt: Vec<f64> = a_mag
            .iter()
            .zip(&a_vert)
            .map(|(mag, vert)| {
                if *mag > 1e-9 {
                    (vert / mag).clamp(-1.0, 1.0).acos()
                } else {
                    0.0
                }
            })
            .collect();
        let tilt_mean = mean(&tilt);
        out.push(tilt_mean);
        out.push(std_dev(&tilt, tilt_mean));
        out.push(high_frequency_std(accelerometer, rate_hz, self.cutoff_hz));
        out.extend(up);
        out.extend([
            up[0] * up[0],
            up[1] * up[1],
            up[2] * up[2],
            up[0] * up[1],
            up[0] * up[2],
            up[1] * up[2],
        ]);
        out
    }

    fn channel(&self, v: &[f64], out: &mut Vec<f64>) {
        let m = mean(v);
        out.push(m);
        out.push(std_dev(v, m));
        let mut sorted = v.to_vec();
        sorted.sort_by(f64::total_cmp);
        out.push(quantile_sorted(&sorted, 0.75) - quantile_sorted(&sorted, 0.25));
        out.push(quantile_sorted(&sorted, 0.10));
        out.push(quantile_sorted(&sorted, 0.90));
        let jerk: Vec<f64> = v.windows(2).map(|w| (w[1] - w[0]) * self.rate_hz).collect();
        out.push(mean_abs(&jerk));
        let spectrum = power_spectrum(v);
        let bin_hz = if spectrum.is_empty() {
            0.0
        } else {
            self.rate_hz / (2 * (spectrum.len() - 1)).max(1) as f64
        };
        let total: f64 = spectrum.iter().skip(1).sum();
        // A constant channel has no dominant frequency.
        let dominant = if total <= 1e-12 {
            0.0
        } else {
            spectrum
                .iter()
                .enumerate()
                .skip(1)
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0.0, |(k, _)| k as f64 * bin_hz)
        };
        out.push(dominant);
        for (lo, hi) in &self.bands {
            let band: f64 = spectrum
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(k, _)| {
                    let f = *k as f64 * bin_hz;
                    f >= *lo && f < *hi
                })
                .map(|(_, p)| p)
                .sum();
            out.push(if total <= 1e-12 { 0.0 } else { band / total });
        }
    }
}

/// The standard deviation (g) of the acceleration magnitude above
/// `cutoff_hz`, at the window's own rate: what the low-pass filter takes
/// away (a vibration a body does not make); 0 when the rate cannot hold such
/// frequencies.
pub fn high_frequency_std(a: &Axes3, rate_hz: f64, cutoff_hz: f64) -> f64 {
    if rate_hz <= 2.0 * cutoff_hz {
        return 0.0;
    }
    let n = a.x.len().min(a.y.len()).min(a.z.len());
    let mag: Vec<f32> = (0..n)
        .map(|i| {
            let (x, y, z) = (f64::from(a.x[i]), f64::from(a.y[i]), f64::from(a.z[i]));
            (x * x + y * y + z * z).sqrt() as f32
        })
        .collect();
    let low = lowpass(&mag, rate_hz, cutoff_hz);
    let rest: Vec<f64> = mag.iter().zip(&low).map(|(m, l)| f64::from(*m) - l).collect();
    std_dev(&rest, mean(&rest))
}

/// A low-pass windowed-sinc FIR (Hamming window, unit gain at 0 Hz) of
/// `samples` at `rate_hz` with its cutoff at `cutoff_hz`; the edges are
/// extended with the first and last sample.
pub fn lowpass(samples: &[f32], rate_hz: f64, cutoff_hz: f64) -> Vec<f64> {
    if samples.is_empty() || cutoff_hz <= 0.0 || cutoff_hz >= 0.5 * rate_hz {
        return samples.iter().map(|&v| f64::from(v)).collect();
    }
    let fc = cutoff_hz / rate_hz;
    let half = ((2.0 / fc).round() as usize).clamp(4, 64);
    let taps: Vec<f64> = (0..=2 * half)
        .map(|i| {
            let k = i as f64 - half as f64;
            let sinc = if k == 0.0 {
                2.0 * fc
            } else {
                (2.0 * PI * fc * k).sin() / (PI * k)
            };
            let hamming = 0.54 - 0.46 * (2.0 * PI * i as f64 / (2 * half) as f64).cos();
            sinc * hamming
        })
        .collect();
    let gain: f64 = taps.iter().sum();
    let last = samples.len() as isize - 1;
    (0..samples.len() as isize)
        .map(|i| {
            taps.iter()
                .enumerate()
                .map(|(t, w)| {
                    let j = (i + t as isize - half as isize).clamp(0, last) as usize;
                    w * f64::from(samples[j])
                })
                .sum::<f64>()
                / gain
        })
        .collect()
}

/// [`resample`] of samples already in `f64`.
pub fn resample_f64(samples: &[f64], from_hz: f64, to_hz: f64) -> Vec<f64> {
    if samples.is_empty() || from_hz <= 0.0 || to_hz <= 0.0 {
        return Vec::new();
    }
    if (from_hz - to_hz).abs() < 1e-9 {
        return samples.to_vec();
    }
    let duration = (samples.len() - 1) as f64 / from_hz;
    let n = (duration * to_hz).floor() as usize + 1;
    (0..n)
        .map(|i| {
            let pos = i as f64 * from_hz / to_hz;
            let k = (pos.floor() as usize).min(samples.len() - 1);
            let next = (k + 1).min(samples.len() - 1);
            let frac = pos - k as f64;
            samples[k] * (1.0 - frac) + samples[next] * frac
        })
        .collect()
}

/// Linear interpolation from `from_hz` to `to_hz`.
pub fn resample(samples: &[f32], from_hz: f64, to_hz: f64) -> Vec<f64> {
    let wide: Vec<f64> = samples.iter().map(|&v| f64::from(v)).collect();
    resample_f64(&wide, from_hz, to_hz)
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn mean_abs(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().map(|x| x.abs()).sum::<f64>() / v.len() as f64
    }
}

fn std_dev(v: &[f64], m: f64) -> f64 {
    if v.len() < 2 {
        0.0
    } else {
        (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64).sqrt()
    }
}

fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (s[hi] - s[lo]) * (pos - lo as f64)
}

/// Pearson correlation; 0 when either side is constant.
pub fn correlation(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (mean(x), mean(y));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx <= f64::EPSILON || syy <= f64::EPSILON {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Pitch and roll (radians) of a gravity vector in device coordinates.
pub fn gravity_angles(x: f64, y: f64, z: f64) -> (f64, f64) {
    ((-x).atan2((y * y + z * z).sqrt()), y.atan2(z))
}

/// The one-sided power spectrum of the mean-removed signal, zero-padded to
/// a power of two (radix-2 FFT): `n/2 + 1` bins from 0 Hz to Nyquist.
pub fn power_spectrum(v: &[f64]) -> Vec<f64> {
    if v.len() < 2 {
        return Vec::new();
    }
    let n = v.len().next_power_of_two();
    let m = mean(v);
    let mut re: Vec<f64> = v.iter().map(|x| x - m).chain(std::iter::repeat(0.0)).take(n).collect();
    let mut im = vec![0.0; n];
    // bit reversal
    let bits = n.trailing_zeros();
    for i in 0..n {
        let j = i.reverse_bits() >> (usize::BITS - bits);
        if j > i {
            re.swap(i, j);
            im.swap(i, j);
        }
    }
    let mut len = 2;
    while len <= n {
        let angle = -2.0 * PI / len as f64;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let (wr, wi) = ((angle * k as f64).cos(), (angle * k as f64).sin());
                let (a, b) = (start + k, start + k + len / 2);
                let (tr, ti) = (re[b] * wr - im[b] * wi, re[b] * wi + im[b] * wr);
                re[b] = re[a] - tr;
                im[b] = im[a] - ti;
                re[a] += tr;
                im[a] += ti;
            }
        }
        len *= 2;
    }
    (0..=n / 2)
        .map(|k| (re[k] * re[k] + im[k] * im[k]) / n as f64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: f64, seconds: f64, amplitude: f64, offset: f64) -> Vec<f32> {
        (0..(seconds * rate) as usize)
            .map(|i| (offset + amplitude * (2.0 * PI * freq * i as f64 / rate).sin()) as f32)
            .collect()
    }

    fn axes(x: Vec<f32>, y: Vec<f32>, z: Vec<f32>) -> Axes3 {
        Axes3 { x, y, z }
    }

    fn still(n: usize) -> Axes3 {
        axes(vec![0.0; n], vec![0.0; n], vec![0.0; n])
    }

    fn feature(spec: &FeatureSpec, f: &[f64], name: &str) -> f64 {
        f[spec
            .names()
            .iter()
            .position(|n| n == name)
            .unwrap_or_else(|| panic!("{name}"))]
    }

    #[test]
    fn a_vertical_sine_has_its_frequency_as_the_dominant_one_at_any_rate() {
        let spec = FeatureSpec::default();
        for (freq, rate) in [(2.0, 50.0), (1.0, 10.0), (3.5, 100.0), (8.0, 100.0)] {
            let n = (10.24 * rate) as usize;
            let acc = axes(vec![0.0; n], vec![0.0; n], sine(freq, rate, 10.24, 0.3, -1.0));
            let f = spec.extract(&acc, &still(n), rate);
            assert_eq!(f.len(), spec.names().len());
            let dominant = feature(&spec, &f, "acc_vert_dominant_hz");
            assert!(
                (dominant - freq).abs() <= 0.15,
                "{freq} Hz at {rate} Hz: dominant {dominant}"
            );
        }
    }

    #[test]
    fn a_vibration_above_the_models_nyquist_does_not_alias_into_a_cadence() {
        // 20 Hz at 100 Hz: resampled to 25 Hz without a filter it would
        // fold to 5 Hz at nearly its full amplitude.
        let spec = FeatureSpec::default();
        let n = 1000;
        let acc = axes(vec![0.0; n], vec![0.0; n], sine(20.0, 100.0, 10.0, 0.5, -1.0));
        let f = spec.extract(&acc, &still(n), 100.0);
        let std = feature(&spec, &f, "acc_vert_std");
        assert!(
            std < 0.02,
            "what is left of the 20 Hz vibration: std {std} (0.35 unfiltered)"
        );
    }

    #[test]
    fn a_constant_channel_has_no_dominant_frequency() {
        let spec = FeatureSpec::default();
        let acc = axes(vec![0.0; 250], vec![0.0; 250], vec![-1.0; 250]);
        let f = spec.extract(&acc, &still(250), 25.0);
        assert_eq!(feature(&spec, &f, "acc_mag_dominant_hz"), 0.0);
        assert_eq!(feature(&spec, &f, "gyr_mag_dominant_hz"), 0.0);
        assert!((feature(&spec, &f, "gravity_norm") - 1.0).abs() < 1e-9);
        assert_eq!(feature(&spec, &f, "gravity_dir_z"), -1.0);
    }

    /// A rotation of the phone's frame (any axis, any angle) or the other
    /// sign convention of the acceleration changes only the gravity's
    /// direction in the phone's frame.
    #[test]
    fn features_do_not_depend_on_how_the_phone_is_turned_or_on_the_sign() {
        let spec = FeatureSpec::default();
        let rate = 50.0;
        let n = 500;
        let acc = axes(
            sine(1.8, rate, 10.0, 0.2, 0.1),
            sine(3.6, rate, 10.0, 0.1, -0.3),
            sine(1.8, rate, 10.0, 0.4, -0.9),
        );
        let gyr = axes(
            sine(1.8, rate, 10.0, 0.5, 0.0),
            sine(0.9, rate, 10.0, 0.3, 0.05),
            sine(3.6, rate, 10.0, 0.2, 0.0),
        );
        let base = spec.extract(&acc, &gyr, rate);
        let names = spec.names();
        let rotate = |a: &Axes3, r: &[[f64; 3]; 3], sign: f64| {
            let mut out = still(n);
            for i in 0..n {
                let v = [f64::from(a.x[i]), f64::from(a.y[i]), f64::from(a.z[i])];
                let w: Vec<f32> = (0..3)
                    .map(|k| (sign * (r[k][0] * v[0] + r[k][1] * v[1] + r[k][2] * v[2])) as f32)
                    .collect();
                out.x[i] = w[0];
                out.y[i] = w[1];
                out.z[i] = w[2];
            }
            out
        };
        let (s, c) = (0.7f64.sin(), 0.7f64.cos());
        let (s2, c2) = (2.1f64.sin(), 2.1f64.cos());
        // About z, then about x.
        let rz = [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]];
        let rx = [[1.0, 0.0, 0.0], [0.0, c2, -s2], [0.0, s2, c2]];
        let mut r = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                r[i][j] = (0..3).map(|k| rx[i][k] * rz[k][j]).sum();
            }
        }
        let identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
        for (what, turned) in [
            (
                "rotated",
                spec.extract(&rotate(&acc, &r, 1.0), &rotate(&gyr, &r, 1.0), rate),
            ),
            ("negated", spec.extract(&rotate(&acc, &identity, -1.0), &gyr, rate)),
        ] {
            for (k, name) in names.iter().enumerate() {
                if name.starts_with("gravity_dir") {
                    continue;
                }
                let (x, y) = (base[k], turned[k]);
                assert!(
                    (x - y).abs() <= 1e-4 * x.abs().max(1.0),
                    "{what}: {name} {x} became {y}"
                );
            }
        }
    }

    #[test]
    fn resampling_filtering_and_correlation() {
        assert_eq!(resample(&[0.0, 1.0, 2.0], 10.0, 10.0), vec![0.0, 1.0, 2.0]);
        assert_eq!(resample(&[0.0, 1.0, 2.0], 10.0, 20.0), vec![0.0, 0.5, 1.0, 1.5, 2.0]);
        assert_eq!(resample(&[0.0, 1.0, 2.0, 3.0, 4.0], 50.0, 25.0), vec![0.0, 2.0, 4.0]);
        // Unit gain: a constant passes unchanged.
        assert!(lowpass(&[0.5; 40], 50.0, 10.0).iter().all(|v| (v - 0.5).abs() < 1e-9));
        let x = [1.0, 2.0, 4.0, 3.0];
        assert!((correlation(&x, &x.map(|v| 2.0 * v)) - 1.0).abs() < 1e-12);
        assert!((correlation(&x, &x.map(|v| -v)) + 1.0).abs() < 1e-12);
        assert_eq!(correlation(&x, &[5.0; 4]), 0.0);
    }

    #[test]
    fn features_are_deterministic_and_finite() {
        let windows = crate::dataset::parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap();
        let spec = FeatureSpec::default();
        for w in &windows {
            let a = spec.extract(&w.accelerometer, &w.gyroscope, w.rate_hz);
            assert!(a.iter().all(|v| v.is_finite()), "{}", w.label);
            assert_eq!(a, spec.extract(&w.accelerometer, &w.gyroscope, w.rate_hz));
        }
        assert!(spec
            .extract(&Axes3::default(), &Axes3::default(), 50.0)
            .iter()
            .all(|v| v.is_finite()));
    }
}
