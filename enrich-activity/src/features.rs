//! The features of one motion window. Pure functions: the same window gives
//! the same vector on every machine.
//!
//! Windows are first resampled to the model's rate ([`FeatureSpec::rate_hz`];
//! the iOS SDK samples at 50 Hz, the training data at 10 Hz). Then, for each
//! of eight channels (accelerometer x, y, z and magnitude, gyroscope x, y, z
//! and magnitude): mean, standard deviation, min, max, interquartile range,
//! energy, jerk (first difference per second) mean absolute value and
//! standard deviation, dominant frequency and the energy in each band of
//! [`FeatureSpec::bands`]. Per sensor: signal magnitude area and the three
//! inter-axis correlations. Finally the gravity orientation (pitch and roll of
//! the mean acceleration), which tells lying from standing when labels have it.

use std::f64::consts::PI;

use context_schemas::Axes3;

/// What a model expects: its rate and frequency bands. Stored in the model
/// artifact; a model refuses features made with another spec.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    pub rate_hz: f64,
    /// Frequency bands in Hz, `[low, high)`.
    pub bands: Vec<(f64, f64)>,
}

impl Default for FeatureSpec {
    fn default() -> Self {
        FeatureSpec {
            rate_hz: 10.0,
            bands: vec![(0.0, 0.5), (0.5, 1.5), (1.5, 3.0), (3.0, 5.0)],
        }
    }
}

const CHANNELS: [&str; 8] = [
    "acc_x", "acc_y", "acc_z", "acc_mag", "gyr_x", "gyr_y", "gyr_z", "gyr_mag",
];
const STATS: [&str; 9] = [
    "mean",
    "std",
    "min",
    "max",
    "iqr",
    "energy",
    "jerk_mean_abs",
    "jerk_std",
    "dominant_hz",
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
        for sensor in ["acc", "gyr"] {
            names.push(format!("{sensor}_sma"));
            for pair in ["xy", "xz", "yz"] {
                names.push(format!("{sensor}_corr_{pair}"));
            }
        }
        names.push("gravity_pitch".into());
        names.push("gravity_roll".into());
        names
    }

    /// The feature vector of a window sampled at `rate_hz`.
    pub fn extract(&self, accelerometer: &Axes3, gyroscope: &Axes3, rate_hz: f64) -> Vec<f64> {
        let to = |v: &[f32]| resample(v, rate_hz, self.rate_hz);
        let (ax, ay, az) = (to(&accelerometer.x), to(&accelerometer.y), to(&accelerometer.z));
        let (gx, gy, gz) = (to(&gyroscope.x), to(&gyroscope.y), to(&gyroscope.z));
        let mag = |x: &[f64], y: &[f64], z: &[f64]| -> Vec<f64> {
            x.iter()
                .zip(y)
                .zip(z)
                .map(|((a, b), c)| (a * a + b * b + c * c).sqrt())
                .collect()
        };
        let (am, gm) = (mag(&ax, &ay, &az), mag(&gx, &gy, &gz));
        let mut out = Vec::with_capacity(self.names().len());
        for channel in [&ax, &ay, &az, &am, &gx, &gy, &gz, &gm] {
            self.channel(channel, &mut out);
        }
        for (x, y, z) in [(&ax, &ay, &az), (&gx, &gy, &gz)] {
            out.push(mean_abs(x) + mean_abs(y) + mean_abs(z));
            out.push(correlation(x, y));
            out.push(correlation(x, z));
            out.push(correlation(y, z));
        }
        let (pitch, roll) = gravity_angles(mean(&ax), mean(&ay), mean(&az));
        out.push(pitch);
        out.push(roll);
        out
    }

    fn channel(&self, v: &[f64], out: &mut Vec<f64>) {
        let m = mean(v);
        out.push(m);
        out.push(std_dev(v, m));
        out.push(v.iter().copied().fold(f64::INFINITY, f64::min).min(f64::MAX));
        out.push(v.iter().copied().fold(f64::NEG_INFINITY, f64::max).max(f64::MIN));
        out.push(quantile(v, 0.75) - quantile(v, 0.25));
        out.push(if v.is_empty() {
            0.0
        } else {
            v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64
        });
        let jerk: Vec<f64> = v.windows(2).map(|w| (w[1] - w[0]) * self.rate_hz).collect();
        out.push(mean_abs(&jerk));
        out.push(std_dev(&jerk, mean(&jerk)));
        let spectrum = power_spectrum(v);
        let bin_hz = if spectrum.is_empty() {
            0.0
        } else {
            self.rate_hz / (2 * (spectrum.len() - 1)).max(1) as f64
        };
        let dominant = spectrum
            .iter()
            .enumerate()
            .skip(1)
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0.0, |(k, _)| k as f64 * bin_hz);
        out.push(dominant);
        let total: f64 = spectrum.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        for (lo, hi) in &self.bands {
            let band: f64 = spectrum
                .iter()
                .enumerate()
                .filter(|(k, _)| {
                    let f = *k as f64 * bin_hz;
                    f >= *lo && f < *hi
                })
                .map(|(_, p)| p)
                .sum();
            out.push(band / total);
        }
    }
}

/// Linear interpolation from `from_hz` to `to_hz`.
pub fn resample(samples: &[f32], from_hz: f64, to_hz: f64) -> Vec<f64> {
    if samples.is_empty() || from_hz <= 0.0 || to_hz <= 0.0 {
        return Vec::new();
    }
    if (from_hz - to_hz).abs() < 1e-9 {
        return samples.iter().map(|&v| f64::from(v)).collect();
    }
    let duration = (samples.len() - 1) as f64 / from_hz;
    let n = (duration * to_hz).floor() as usize + 1;
    (0..n)
        .map(|i| {
            let pos = i as f64 * from_hz / to_hz;
            let k = (pos.floor() as usize).min(samples.len() - 1);
            let next = (k + 1).min(samples.len() - 1);
            let frac = pos - k as f64;
            f64::from(samples[k]) * (1.0 - frac) + f64::from(samples[next]) * frac
        })
        .collect()
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

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
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

    #[test]
    fn a_sine_has_its_frequency_as_the_dominant_one() {
        let spec = FeatureSpec::default();
        let names = spec.names();
        for (freq, rate) in [(2.0, 50.0), (1.0, 10.0), (3.5, 100.0)] {
            let acc = axes(
                sine(freq, rate, 12.8, 0.5, 0.0),
                vec![0.0; (12.8 * rate) as usize],
                vec![1.0; (12.8 * rate) as usize],
            );
            let gyr = axes(vec![0.0; acc.x.len()], vec![0.0; acc.x.len()], vec![0.0; acc.x.len()]);
            let f = spec.extract(&acc, &gyr, rate);
            assert_eq!(f.len(), names.len());
            let dominant = f[names.iter().position(|n| n == "acc_x_dominant_hz").unwrap()];
            assert!(
                (dominant - freq).abs() <= 0.1,
                "{freq} Hz at {rate} Hz: dominant {dominant}"
            );
            let std = f[names.iter().position(|n| n == "acc_x_std").unwrap()];
            assert!((std - 0.5 / 2f64.sqrt()).abs() < 0.02, "std {std}");
        }
    }

    #[test]
    fn constant_gravity_gives_known_angles() {
        let deg = |r: f64| r.to_degrees();
        let (p, r) = gravity_angles(0.0, 0.0, 1.0);
        assert!(deg(p).abs() < 1e-9 && deg(r).abs() < 1e-9);
        let (p, _) = gravity_angles(1.0, 0.0, 0.0);
        assert!((deg(p) + 90.0).abs() < 1e-9);
        let (_, r) = gravity_angles(0.0, 1.0, 0.0);
        assert!((deg(r) - 90.0).abs() < 1e-9);
        let spec = FeatureSpec::default();
        let acc = axes(vec![0.0; 50], vec![-1.0; 50], vec![0.0; 50]);
        let gyr = axes(vec![0.0; 50], vec![0.0; 50], vec![0.0; 50]);
        let f = spec.extract(&acc, &gyr, 10.0);
        let n = f.len();
        assert!((deg(f[n - 1]) + 90.0).abs() < 1e-6, "roll {}", deg(f[n - 1]));
    }

    #[test]
    fn resampling_and_correlation() {
        assert_eq!(resample(&[0.0, 1.0, 2.0], 10.0, 10.0), vec![0.0, 1.0, 2.0]);
        assert_eq!(resample(&[0.0, 1.0, 2.0], 10.0, 20.0), vec![0.0, 0.5, 1.0, 1.5, 2.0]);
        assert_eq!(resample(&[0.0, 1.0, 2.0, 3.0, 4.0], 50.0, 25.0), vec![0.0, 2.0, 4.0]);
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
