//! The activity model: one of several linfa families over standardized
//! [`FeatureSpec`] features — Gaussian naive Bayes (linfa-bayes), multinomial
//! logistic regression (linfa-logistic) and an RBF support vector machine
//! (linfa-svm, one-vs-rest with Platt-scaled probabilities; only on small
//! data, its training grows with the square of the windows) — the family and
//! its hyper-parameters chosen by cross-validation on the training data
//! only. Windows that name their group (the subject of a recordings folder)
//! are cross-validated by group, each subject's windows in one fold, so the
//! score is that of subjects the model has never seen; others by repeated
//! stratified folds. The candidate with the highest macro-F1 wins, ties
//! broken by the lower expected calibration error, then by the order of
//! [`CANDIDATES`]. The scaler is fitted on each training fold only, and the
//! chosen one on all the data; it travels in the artifact, a versioned JSON
//! file that also carries the feature specification it expects, what it was
//! trained on, and its unknown gate ([`Gate`]).
//!
//! Training is reproducible: the folds are drawn from the seed and every fit
//! is deterministic. (linfa-trees was tried first; its trees depend on
//! hash-map iteration order, so the same data gives different trees.)

use std::time::Instant;

use context_schemas::sample::SampleRng;
use linfa::dataset::Pr;
use linfa::prelude::*;
use linfa_bayes::GaussianNb;
use linfa_logistic::{MultiFittedLogisticRegression, MultiLogisticRegression};
use linfa_svm::Svm;
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::LabelledWindow;
use crate::features::FeatureSpec;

/// The artifact format this build reads and writes.
pub const FORMAT: u32 = 3;

/// The feature specification as stored in an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecRecord {
    pub version: u32,
    pub rate_hz: f64,
    pub cutoff_hz: f64,
    pub bands: Vec<(f64, f64)>,
    pub min_seconds: f64,
    pub names: Vec<String>,
}

impl SpecRecord {
    pub fn of(spec: &FeatureSpec) -> Self {
        SpecRecord {
            version: spec.version,
            rate_hz: spec.rate_hz,
            cutoff_hz: spec.cutoff_hz,
            bands: spec.bands.clone(),
            min_seconds: spec.min_seconds,
            names: spec.names(),
        }
    }
}

/// What a model was trained on, as stored in its artifact.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecord {
    /// The data given to `train` (paths as given).
    pub data: Vec<String>,
    /// The groups (subjects) of the training windows; empty when the data
    /// names none.
    pub groups: Vec<String>,
    pub windows: usize,
    /// Window lengths cut from recordings, and their hop.
    pub window_seconds: Vec<f64>,
    pub hop_seconds: f64,
    /// Copies of moving windows turned at random added to training.
    pub rotated_copies: usize,
    /// How windows of another rate are handled.
    pub sample_rates: String,
}

/// Cross-validated scores of the chosen candidate, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CvRecord {
    /// `subject` (grouped folds) or `stratified`.
    pub folds_by: String,
    pub folds: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub log_loss: f64,
    /// Expected calibration error (10 bins of confidence).
    pub ece: f64,
    /// The lowest accuracy of one held-out group.
    pub worst_group_accuracy: Option<f64>,
    /// Held-out windows the gate or the confidence threshold made unknown.
    pub unknown_share: f64,
    /// Candidates compared: the chosen one's score is the best of these.
    pub candidates: usize,
}

/// When a window is `unknown` rather than a class: its best class below
/// `min_confidence`, or its features further from that class's training
/// windows than `factor` times their 99th-percentile distance, measured two
/// ways on standardized features: the root mean square over all features
/// (unlike in many ways) and the largest single one (unlike in one way, a
/// vibration's high-frequency energy say). An input unlike anything trained
/// on, which a confident classifier would still label.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub min_confidence: f32,
    pub factor: f64,
    /// Per class: the mean of its standardized training windows.
    pub centroids: Vec<Vec<f64>>,
    /// Per class: the 99th percentile of its training windows' distance.
    pub radius: Vec<f64>,
    /// Per class: the 99th percentile of its training windows' largest
    /// single-feature distance.
    pub max_radius: Vec<f64>,
    /// The features measured: all but the phone's orientation
    /// (`gravity_dir_*`), which differs with how each person carries it.
    pub measured: Vec<bool>,
}

impl Gate {
    fn fit(
        z: &Array2<f64>,
        y: &Array1<usize>,
        classes: usize,
        min_confidence: f32,
        factor: f64,
        names: &[String],
    ) -> Gate {
        let width = z.ncols();
        let measured: Vec<bool> = (0..width)
            .map(|j| names.get(j).is_none_or(|n| !n.starts_with("gravity_dir")))
            .collect();
        let keep = |row: ndarray::ArrayView1<f64>| -> Vec<f64> {
            row.iter()
                .zip(&measured)
                .map(|(v, m)| if *m { *v } else { 0.0 })
                .collect()
        };
        let mut centroids = vec![vec![0.0; width]; classes];
        let mut counts = vec![0usize; classes];
        for (row, &c) in z.rows().into_iter().zip(y) {
            counts[c] += 1;
            for (acc, v) in centroids[c].iter_mut().zip(row) {
                *acc += v;
            }
        }
        for (c, n) in centroids.iter_mut().zip(&counts) {
            c.iter_mut().for_each(|v| *v /= (*n).max(1) as f64);
            c.iter_mut().zip(&measured).for_each(|(v, m)| {
                if !m {
                    *v = 0.0;
                }
            });
        }
        let mut distances = vec![Vec::new(); classes];
        let mut largest = vec![Vec::new(); classes];
        for (row, &c) in z.rows().into_iter().zip(y) {
            let row = keep(row);
            distances[c].push(rms_distance(row.iter().copied(), &centroids[c]));
            largest[c].push(max_distance(row.iter().copied(), &centroids[c]));
        }
        let p99 = |mut d: Vec<f64>| {
            d.sort_by(f64::total_cmp);
            if d.is_empty() {
                f64::INFINITY
            } else {
                d[((d.len() - 1) as f64 * 0.99).round() as usize].max(1e-9)
            }
        };
        Gate {
            min_confidence,
            factor,
            centroids,
            radius: distances.into_iter().map(p99).collect(),
            max_radius: largest.into_iter().map(p99).collect(),
            measured,
        }
    }

    /// How far standardized `z` lies from the training windows of `class`,
    /// in units of their 99th-percentile distance (the larger of the two
    /// measures); 0 for a class the gate does not know.
    fn ratio(&self, z: &[f64], class: usize) -> f64 {
        let z: Vec<f64> = z
            .iter()
            .zip(&self.measured)
            .map(|(v, m)| if *m { *v } else { 0.0 })
            .collect();
        match (
            self.centroids.get(class),
            self.radius.get(class),
            self.max_radius.get(class),
        ) {
            (Some(c), Some(r), Some(m)) => {
                (rms_distance(z.iter().copied(), c) / r).max(max_distance(z.iter().copied(), c) / m)
            }
            _ => 0.0,
        }
    }

    /// Whether standardized `z` is like the training windows of `class`.
    fn familiar(&self, z: &[f64], class: usize) -> bool {
        self.ratio(z, class) <= self.factor
    }
}

fn max_distance(z: impl Iterator<Item = f64>, centroid: &[f64]) -> f64 {
    z.zip(centroid)
        .map(|(v, c)| if v.is_finite() { (v - c).abs() } else { 1e6 })
        .fold(0.0, f64::max)
}

fn rms_distance(z: impl Iterator<Item = f64>, centroid: &[f64]) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for (v, c) in z.zip(centroid) {
        let d = if v.is_finite() { v - c } else { 1e6 };
        sum += d * d;
        n += 1;
    }
    (sum / n.max(1) as f64).sqrt()
}

/// The verdict on one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The class, or `None` for unknown.
    pub class: Option<usize>,
    /// The best class's probability.
    pub confidence: f32,
    /// Why it is unknown: `low_confidence`, `unfamiliar`,
    /// `invalid_probabilities`.
    pub reason: Option<&'static str>,
    pub probabilities: Vec<f32>,
}

/// A trained model as written to disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Model {
    pub format: u32,
    /// `act-` and 12 hex digits of the SHA-256 of everything else: the same
    /// training gives the same version, any change another.
    pub model_version: String,
    pub description: String,
    pub feature_spec: SpecRecord,
    pub labels: Vec<String>,
    pub cv_accuracy: f64,
    /// Mean log-loss of the held-out windows in cross-validation.
    pub cv_log_loss: f64,
    /// The chosen candidate's cross-validated scores.
    pub cv: CvRecord,
    pub training: TrainingRecord,
    pub gate: Gate,
    pub seed: u64,
    /// Standardization fitted on the training windows.
    pub scaler: Scaler,
    pub classifier: Classifier,
}

/// Per-feature standardization: `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Scaler {
    fn fit(x: &Array2<f64>) -> Self {
        let n = x.nrows().max(1) as f64;
        let mean: Vec<f64> = x.columns().into_iter().map(|c| c.sum() / n).collect();
        let std = x
            .columns()
            .into_iter()
            .zip(&mean)
            .map(|(c, m)| {
                let v = c.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n;
                // A constant feature divides by one, not by zero.
                if v.sqrt() > 1e-12 {
                    v.sqrt()
                } else {
                    1.0
                }
            })
            .collect();
        Scaler { mean, std }
    }

    fn apply(&self, x: &Array2<f64>) -> Array2<f64> {
        let mut out = x.clone();
        for mut row in out.rows_mut() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = (*v - self.mean[j]) / self.std[j];
            }
        }
        out
    }
}

/// The fitted classifier of one family.
// Externally tagged: an internally tagged enum buffers its content, and the
// naive Bayes model's integer map keys do not survive that as JSON strings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classifier {
    GaussianNb {
        model: GaussianNb<f64, usize>,
        /// The model's parameters, read once, for the stable computation.
        #[serde(skip)]
        stable: std::sync::OnceLock<Vec<NbClass>>,
    },
    Logistic {
        model: MultiFittedLogisticRegression<f64, usize>,
    },
    /// One probability SVM per class (that class against the rest).
    SvmRbf { models: Vec<Svm<f64, Pr>> },
}

/// A family with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Candidate {
    GaussianNb { var_smoothing: f64 },
    Logistic { alpha: f64 },
    SvmRbf { c: f64, eps: f64 },
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Candidate::GaussianNb { var_smoothing } => {
                write!(f, "Gaussian naive Bayes, var_smoothing {var_smoothing:e}")
            }
            Candidate::Logistic { alpha } => write!(f, "multinomial logistic regression, alpha {alpha:e}"),
            Candidate::SvmRbf { c, eps } => write!(f, "SVM (RBF, one-vs-rest), C {c}, kernel eps {eps}"),
        }
    }
}

/// The candidates [`train`] compares.
pub const CANDIDATES: [Candidate; 12] = [
    Candidate::GaussianNb { var_smoothing: 1e-9 },
    Candidate::GaussianNb { var_smoothing: 1e-3 },
    Candidate::GaussianNb { var_smoothing: 1e-1 },
    Candidate::Logistic { alpha: 1e-2 },
    Candidate::Logistic { alpha: 1e-1 },
    Candidate::Logistic { alpha: 1.0 },
    Candidate::Logistic { alpha: 3.0 },
    Candidate::Logistic { alpha: 10.0 },
    Candidate::SvmRbf { c: 1.0, eps: 100.0 },
    Candidate::SvmRbf { c: 10.0, eps: 100.0 },
    Candidate::SvmRbf { c: 1.0, eps: 1000.0 },
    Candidate::SvmRbf { c: 10.0, eps: 1000.0 },
];

/// Cross-validation repeats, each with its own stratified folds (grouped
/// folds are drawn once: every group is held out exactly once).
pub const CV_REPEATS: u64 = 3;

/// Above this many training windows the SVM candidates are skipped.
pub const SVM_MAX_WINDOWS: usize = 2000;

/// Gate factors [`train_with`] tries, smallest first: the smallest whose
/// held-out unknown share stays within [`GATE_TARGET_UNKNOWN`] is kept.
pub const GATE_FACTORS: [f64; 6] = [1.25, 1.5, 2.0, 2.5, 3.0, 5.0];
/// The share of familiar held-out windows the gate (with the confidence
/// threshold) may call unknown in cross-validation; below the 5 % allowed,
/// because subjects never seen sit further out than held-out folds.
pub const GATE_TARGET_UNKNOWN: f64 = 0.01;

/// How [`train_with`] trains.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub seed: u64,
    pub folds: usize,
    /// With grouped data: add one randomly turned copy of each moving
    /// (walking, running) window, so that telling moving from still does
    /// not depend on how the phone is held.
    pub rotate_moving: bool,
    pub min_confidence: f32,
    /// What to record about the data.
    pub training: TrainingRecord,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            seed: 42,
            folds: 5,
            rotate_moving: true,
            min_confidence: 0.5,
            training: TrainingRecord::default(),
        }
    }
}

impl Candidate {
    /// Fits on standardized rows `x` with class indices `y` (`classes` of them).
    fn fit(self, x: &Array2<f64>, y: &Array1<usize>, classes: usize) -> Result<Classifier, String> {
        match self {
            Candidate::GaussianNb { var_smoothing } => Ok(Classifier::GaussianNb {
                model: GaussianNb::params()
                    .var_smoothing(var_smoothing)
                    .fit(&Dataset::new(x.clone(), y.clone()))
                    .map_err(|e| format!("training failed: {e}"))?,
                stable: std::sync::OnceLock::new(),
            }),
            Candidate::Logistic { alpha } => Ok(Classifier::Logistic {
                model: MultiLogisticRegression::default()
                    .alpha(alpha)
                    .max_iterations(500)
                    .fit(&Dataset::new(x.clone(), y.clone()))
                    .map_err(|e| format!("training failed: {e}"))?,
            }),
            Candidate::SvmRbf { c, eps } => {
                let models = (0..classes)
                    .map(|class| {
                        let targets: Array1<bool> = y.mapv(|v| v == class);
                        Svm::<f64, Pr>::params()
                            .gaussian_kernel(eps)
                            .pos_neg_weights(c, c)
                            .fit(&Dataset::new(x.clone(), targets))
                            .map_err(|e| format!("training failed: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Classifier::SvmRbf { models })
            }
        }
    }
}

impl Classifier {
    /// Class probabilities of standardized rows, columns in class-index order.
    fn probabilities(&self, x: &Array2<f64>, classes: usize) -> Vec<Vec<f32>> {
        match self {
            Classifier::GaussianNb { model, stable } => {
                let params = stable.get_or_init(|| NbClass::of(model));
                x.rows()
                    .into_iter()
                    .map(|row| stable_nb_probabilities(params, row.as_slice().unwrap_or(&row.to_vec()), classes))
                    .collect()
            }
            Classifier::Logistic { model } => {
                let p = model.predict_probabilities(x);
                let order = model.classes();
                (0..x.nrows())
                    .map(|row| {
                        let mut out = vec![0f32; classes];
                        for (col, class) in order.iter().enumerate() {
                            if *class < classes {
                                out[*class] = p[[row, col]] as f32;
                            }
                        }
                        out
                    })
                    .collect()
            }
            Classifier::SvmRbf { models } => x
                .rows()
                .into_iter()
                .map(|row| {
                    let raw: Vec<f32> = models.iter().map(|m| *m.predict(row)).collect();
                    let sum: f32 = raw.iter().sum();
                    if sum > 0.0 && sum.is_finite() {
                        raw.iter().map(|p| p / sum).collect()
                    } else {
                        raw
                    }
                })
                .collect(),
        }
    }
}

/// What [`train`] reports besides the model.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Every candidate's cross-validated scores (NaN: skipped).
    pub candidates: Vec<CandidateScore>,
    /// Cross-validated confusion of the chosen candidate (rows true, columns predicted).
    pub confusion: Vec<Vec<usize>>,
}

/// One candidate's cross-validated scores.
#[derive(Debug, Clone)]
pub struct CandidateScore {
    pub name: String,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub ece: f64,
    pub log_loss: f64,
    /// µs of inference per window.
    pub micros: f64,
}

/// One class of a Gaussian naive Bayes model: its prior and per-feature mean
/// and variance.
#[derive(Debug, Clone, PartialEq)]
pub struct NbClass {
    class: usize,
    log_prior: f64,
    /// `-0.5 * sum(ln(2 pi sigma))`, the part that does not depend on x.
    log_norm: f64,
    theta: Vec<f64>,
    sigma: Vec<f64>,
}

impl NbClass {
    /// linfa-bayes keeps its parameters private; its serialized form is the
    /// documented way to read them.
    fn of(model: &GaussianNb<f64, usize>) -> Vec<NbClass> {
        let value = serde_json::to_value(model).expect("a model serializes");
        let numbers = |v: &serde_json::Value| -> Vec<f64> {
            v["data"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default()
        };
        let mut out: Vec<NbClass> = value["class_info"]
            .as_object()
            .map(|classes| {
                classes
                    .iter()
                    .filter_map(|(class, info)| {
                        let sigma = numbers(&info["sigma"]);
                        Some(NbClass {
                            class: class.parse().ok()?,
                            log_prior: info["prior"].as_f64()?.ln(),
                            log_norm: -0.5 * sigma.iter().map(|s| (2.0 * std::f64::consts::PI * s).ln()).sum::<f64>(),
                            theta: numbers(&info["theta"]),
                            sigma,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by_key(|c| c.class);
        out
    }
}

/// Class probabilities of one standardized row, computed in log space with
/// the largest joint log-likelihood subtracted before exponentiating (linfa's
/// `predict_proba` exponentiates first and overflows to NaN or infinity on
/// windows far from the training data).
fn stable_nb_probabilities(params: &[NbClass], x: &[f64], classes: usize) -> Vec<f32> {
    let jll: Vec<(usize, f64)> = params
        .iter()
        .map(|c| {
            let distance: f64 = x
                .iter()
                .zip(c.theta.iter().zip(&c.sigma))
                .map(|(v, (t, s))| (v - t).powi(2) / s)
                .sum();
            (c.class, c.log_prior + c.log_norm - 0.5 * distance)
        })
        .collect();
    let max = jll.iter().map(|(_, l)| *l).fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = jll.iter().map(|(_, l)| (l - max).exp()).sum();
    let mut out = vec![0f32; classes];
    for (class, l) in jll {
        if class < classes {
            out[class] = ((l - max).exp() / total) as f32;
        }
    }
    out
}

fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// The features of every window, and each window's class index.
fn matrix(windows: &[LabelledWindow], spec: &FeatureSpec, labels: &[String]) -> (Array2<f64>, Array1<usize>) {
    let rows: Vec<Vec<f64>> = windows
        .iter()
        .map(|w| spec.extract(&w.accelerometer, &w.gyroscope, w.rate_hz))
        .collect();
    let width = spec.names().len();
    let x =
        Array2::from_shape_vec((rows.len(), width), rows.into_iter().flatten().collect()).expect("rows of one width");
    let y = windows
        .iter()
        .map(|w| labels.iter().position(|l| *l == w.label).unwrap_or(0))
        .collect();
    (x, y)
}

/// [`train_with`] with a seed and a number of folds, the rest by default.
pub fn train(
    windows: &[LabelledWindow],
    spec: &FeatureSpec,
    seed: u64,
    folds: usize,
) -> Result<(Model, TrainReport), String> {
    train_with(
        windows,
        spec,
        &TrainOptions {
            seed,
            folds,
            ..TrainOptions::default()
        },
    )
}

/// Whether a (canonical) label is a moving activity.
fn moving(label: &str) -> bool {
    matches!(crate::dataset::canonical_label(label).as_str(), "walking" | "running")
}

/// The id suffix of a turned copy made for training.
const TURNED: &str = "~turned";

/// `w` turned by a random rotation (uniform over rotations, from `rng`).
pub fn rotated(w: &LabelledWindow, rng: &mut SampleRng) -> LabelledWindow {
    // A uniform random unit quaternion (Shoemake).
    let (u1, u2, u3) = (rng.unit(), rng.unit(), rng.unit());
    let tau = 2.0 * std::f64::consts::PI;
    let (a, b) = ((1.0 - u1).sqrt(), u1.sqrt());
    let (x, y, z, q) = (
        a * (tau * u2).sin(),
        a * (tau * u2).cos(),
        b * (tau * u3).sin(),
        b * (tau * u3).cos(),
    );
    let r = [
        [
            1.0 - 2.0 * (y * y + z * z),
            2.0 * (x * y - z * q),
            2.0 * (x * z + y * q),
        ],
        [
            2.0 * (x * y + z * q),
            1.0 - 2.0 * (x * x + z * z),
            2.0 * (y * z - x * q),
        ],
        [
            2.0 * (x * z - y * q),
            2.0 * (y * z + x * q),
            1.0 - 2.0 * (x * x + y * y),
        ],
    ];
    rotate_axes(w, &r)
}

/// `w` with both sensors turned by the rotation matrix `r`.
pub fn rotate_axes(w: &LabelledWindow, r: &[[f64; 3]; 3]) -> LabelledWindow {
    let turn = |a: &context_schemas::Axes3| {
        let mut out = context_schemas::Axes3::default();
        for i in 0..a.x.len().min(a.y.len()).min(a.z.len()) {
            let v = [f64::from(a.x[i]), f64::from(a.y[i]), f64::from(a.z[i])];
            let t = |k: usize| (r[k][0] * v[0] + r[k][1] * v[1] + r[k][2] * v[2]) as f32;
            out.x.push(t(0));
            out.y.push(t(1));
            out.z.push(t(2));
        }
        out
    };
    LabelledWindow {
        accelerometer: turn(&w.accelerometer),
        gyroscope: turn(&w.gyroscope),
        id: format!("{}{TURNED}", w.id),
        ..w.clone()
    }
}

/// Per held-out row: the fold it belongs to in each repeat. Grouped (every
/// window names a group): groups shuffled by the seed and dealt into the
/// folds, once; otherwise stratified by class, [`CV_REPEATS`] times.
fn fold_assignment(
    windows: &[LabelledWindow],
    y: &Array1<usize>,
    k: usize,
    folds: usize,
    seed: u64,
) -> (Vec<Vec<usize>>, usize, bool) {
    let mut rng = SampleRng::new(seed);
    let grouped = windows.iter().all(|w| w.group.is_some());
    if grouped {
        let mut groups: Vec<&str> = windows.iter().filter_map(|w| w.group.as_deref()).collect();
        groups.sort();
        groups.dedup();
        for i in (1..groups.len()).rev() {
            groups.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        let folds = folds.min(groups.len()).max(2);
        let fold_of_group: std::collections::HashMap<&str, usize> =
            groups.iter().enumerate().map(|(n, g)| (*g, n % folds)).collect();
        let fold = windows
            .iter()
            .map(|w| fold_of_group[w.group.as_deref().unwrap_or_default()])
            .collect();
        return (vec![fold], folds, true);
    }
    let mut fold_of = Vec::new();
    for _ in 0..CV_REPEATS {
        let mut fold = vec![0usize; windows.len()];
        for class in 0..k {
            let mut members: Vec<usize> = (0..windows.len()).filter(|&i| y[i] == class).collect();
            for i in (1..members.len()).rev() {
                members.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
            }
            for (n, i) in members.into_iter().enumerate() {
                fold[i] = n % folds;
            }
        }
        fold_of.push(fold);
    }
    (fold_of, folds, false)
}

/// Macro-F1 over `k` classes of a confusion matrix (rows true, columns
/// predicted; a column `k`, when present, is unknown).
pub fn macro_f1(confusion: &[Vec<usize>], k: usize) -> f64 {
    let f1: Vec<f64> = (0..k).map(|c| class_scores(confusion, c).2).collect();
    f1.iter().sum::<f64>() / k.max(1) as f64
}

/// Precision, recall and F1 of class `c`.
fn class_scores(confusion: &[Vec<usize>], c: usize) -> (f64, f64, f64) {
    let tp = confusion.get(c).and_then(|r| r.get(c)).copied().unwrap_or(0) as f64;
    let predicted: usize = confusion.iter().map(|row| row.get(c).copied().unwrap_or(0)).sum();
    let actual: usize = confusion.get(c).map_or(0, |r| r.iter().sum());
    let p = if predicted == 0 { 0.0 } else { tp / predicted as f64 };
    let r = if actual == 0 { 0.0 } else { tp / actual as f64 };
    let f = if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) };
    (p, r, f)
}

/// Expected calibration error of (confidence, correct) pairs, 10 bins.
pub fn ece(pairs: &[(f32, bool)]) -> f64 {
    let mut bins = [(0.0f64, 0.0f64, 0usize); 10];
    for &(c, ok) in pairs {
        let b = ((f64::from(c) * 10.0) as usize).min(9);
        bins[b].0 += f64::from(c);
        bins[b].1 += f64::from(u8::from(ok));
        bins[b].2 += 1;
    }
    let n = pairs.len().max(1) as f64;
    bins.iter()
        .filter(|b| b.2 > 0)
        .map(|(conf, acc, count)| (*count as f64 / n) * ((conf - acc) / *count as f64).abs())
        .sum()
}

/// Cross-validates every candidate of [`CANDIDATES`] (folds as
/// [`fold_assignment`] draws them from the seed; the scaler fitted on each
/// training fold only), keeps the best by macro-F1, then by calibration,
/// then the first listed; fits it with a scaler and its [`Gate`] on all
/// windows.
pub fn train_with(
    windows: &[LabelledWindow],
    spec: &FeatureSpec,
    options: &TrainOptions,
) -> Result<(Model, TrainReport), String> {
    let mut labels: Vec<String> = windows.iter().map(|w| w.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let folds = options.folds.max(2);
    if labels.len() < 2 || windows.len() < folds {
        return Err(format!(
            "need at least 2 labels and {folds} windows, got {} and {}",
            labels.len(),
            windows.len()
        ));
    }
    let grouped = windows.iter().all(|w| w.group.is_some());
    let mut all: Vec<LabelledWindow> = windows.to_vec();
    let mut rotated_copies = 0;
    if grouped && options.rotate_moving {
        let mut rng = SampleRng::new(options.seed ^ 0x005e_ed0f_7a1e);
        for w in windows.iter().filter(|w| moving(&w.label)) {
            all.push(rotated(w, &mut rng));
            rotated_copies += 1;
        }
    }
    let (x, y) = matrix(&all, spec, &labels);
    let names = spec.names();
    let k = labels.len();
    let (fold_of, folds, grouped) = fold_assignment(&all, &y, k, folds, options.seed);
    let rows = all.len();
    let mut candidates = Vec::new();
    struct Best {
        f1: f64,
        ece: f64,
        candidate: Candidate,
        confusion: Vec<Vec<usize>>,
        cv: CvRecord,
        held_out: Vec<(usize, Vec<f32>, f64)>,
    }
    let mut best: Option<Best> = None;
    for candidate in CANDIDATES {
        if matches!(candidate, Candidate::SvmRbf { .. }) && rows > SVM_MAX_WINDOWS {
            candidates.push(CandidateScore {
                name: format!("{candidate} (skipped: over {SVM_MAX_WINDOWS} windows)"),
                accuracy: f64::NAN,
                macro_f1: f64::NAN,
                ece: f64::NAN,
                log_loss: f64::NAN,
                micros: f64::NAN,
            });
            continue;
        }
        let (mut seen, mut log_loss, mut micros) = (0usize, 0.0f64, 0.0f64);
        let mut confusion = vec![vec![0usize; k]; k];
        let mut pairs = Vec::new();
        // (row, probabilities, gate distance ratio) of held-out windows.
        let mut held_out = Vec::new();
        let mut group_hits: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
        for fold in &fold_of {
            for f in 0..folds {
                let test: Vec<usize> = (0..rows).filter(|&i| fold[i] == f).collect();
                let train_rows: Vec<usize> = (0..rows).filter(|&i| fold[i] != f).collect();
                if test.is_empty() {
                    continue;
                }
                let train_x = x.select(ndarray::Axis(0), &train_rows);
                let train_y = y.select(ndarray::Axis(0), &train_rows);
                let scaler = Scaler::fit(&train_x);
                let train_z = scaler.apply(&train_x);
                let model = candidate.fit(&train_z, &train_y, k)?;
                let gate = Gate::fit(&train_z, &train_y, k, options.min_confidence, 1.0, &names);
                let test_z = scaler.apply(&x.select(ndarray::Axis(0), &test));
                let started = Instant::now();
                let p = model.probabilities(&test_z, k);
                micros += started.elapsed().as_secs_f64() * 1e6;
                for (r, &row) in test.iter().enumerate() {
                    // The turned copies train; only real windows are scored.
                    if all[row].id.ends_with(TURNED) {
                        continue;
                    }
                    let predicted = argmax(&p[r]);
                    confusion[y[row]][predicted] += 1;
                    pairs.push((p[r][predicted], predicted == y[row]));
                    let p_true = f64::from(p[r][y[row]]);
                    log_loss -= if p_true.is_finite() {
                        p_true.max(1e-15).ln()
                    } else {
                        1e-15f64.ln()
                    };
                    let z: Vec<f64> = test_z.row(r).to_vec();
                    let ratio = gate.ratio(&z, predicted);
                    held_out.push((row, p[r].clone(), ratio));
                    if let Some(g) = &all[row].group {
                        let e = group_hits.entry(g.clone()).or_default();
                        e.0 += usize::from(predicted == y[row]);
                        e.1 += 1;
                    }
                    seen += 1;
                }
            }
        }
        let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
        let accuracy = correct as f64 / seen.max(1) as f64;
        let log_loss = log_loss / seen.max(1) as f64;
        let micros = micros / seen.max(1) as f64;
        let f1 = macro_f1(&confusion, k);
        let calibration = ece(&pairs);
        candidates.push(CandidateScore {
            name: candidate.to_string(),
            accuracy,
            macro_f1: f1,
            ece: calibration,
            log_loss,
            micros,
        });
        let better = best
            .as_ref()
            .is_none_or(|b| f1 > b.f1 + 1e-12 || ((f1 - b.f1).abs() <= 1e-12 && calibration < b.ece - 1e-12));
        if better {
            best = Some(Best {
                f1,
                ece: calibration,
                candidate,
                confusion,
                cv: CvRecord {
                    folds_by: if grouped { "subject" } else { "stratified" }.into(),
                    folds,
                    accuracy,
                    macro_f1: f1,
                    log_loss,
                    ece: calibration,
                    worst_group_accuracy: group_hits
                        .values()
                        .map(|(hit, n)| *hit as f64 / (*n).max(1) as f64)
                        .min_by(f64::total_cmp),
                    unknown_share: 0.0,
                    candidates: 0,
                },
                held_out,
            });
        }
    }
    let Best {
        candidate,
        confusion,
        mut cv,
        held_out,
        ..
    } = best.expect("at least one candidate");
    cv.candidates = candidates.iter().filter(|c| !c.accuracy.is_nan()).count();
    // The gate's factor: the smallest that leaves familiar held-out windows
    // unknown at most GATE_TARGET_UNKNOWN of the time (with the confidence
    // threshold).
    let unknown_at = |factor: f64| {
        let unknown = held_out
            .iter()
            .filter(|(_, p, ratio)| p[argmax(p)] < options.min_confidence || *ratio > factor)
            .count();
        unknown as f64 / held_out.len().max(1) as f64
    };
    let factor = GATE_FACTORS
        .iter()
        .copied()
        .find(|f| unknown_at(*f) <= GATE_TARGET_UNKNOWN)
        .unwrap_or(GATE_FACTORS[GATE_FACTORS.len() - 1]);
    cv.unknown_share = unknown_at(factor);
    let scaler = Scaler::fit(&x);
    let z = scaler.apply(&x);
    let classifier = candidate.fit(&z, &y, k)?;
    let gate = Gate::fit(&z, &y, k, options.min_confidence, factor, &names);
    let mut groups: Vec<String> = all.iter().filter_map(|w| w.group.clone()).collect();
    groups.sort();
    groups.dedup();
    let mut training = options.training.clone();
    training.groups = groups;
    training.windows = windows.len();
    training.rotated_copies = rotated_copies;
    training.sample_rates = format!(
        "low-pass below {} Hz (windowed sinc) when faster, then linear resampling to {} Hz",
        spec.cutoff_hz, spec.rate_hz
    );
    let mut model = Model {
        format: FORMAT,
        model_version: String::new(),
        description: candidate.to_string(),
        feature_spec: SpecRecord::of(spec),
        labels,
        cv_accuracy: cv.accuracy,
        cv_log_loss: cv.log_loss,
        cv,
        training,
        gate,
        seed: options.seed,
        scaler,
        classifier,
    };
    model.model_version = model.content_version();
    Ok((model, TrainReport { candidates, confusion }))
}

/// An evaluation on labelled windows (`enrich-activity eval`).
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub model_version: String,
    /// The model family and its hyper-parameters.
    pub family: String,
    pub count: usize,
    /// Share of the windows whose (canonical) label is one of the model's
    /// that got it; unknown counts as wrong.
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassScore>,
    /// Share of all windows answered unknown.
    pub unknown_share: f64,
    /// Expected calibration error of the answered windows (10 bins).
    pub ece: f64,
    /// Accuracy per group (subject), when the windows name one.
    pub per_group: Vec<(String, f64)>,
    /// Rows: true labels (the model's, then others found); columns: the
    /// model's labels, then `unknown`.
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub confusion: Vec<Vec<usize>>,
    pub windows: Vec<WindowResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassScore {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct WindowResult {
    pub id: String,
    pub label: String,
    pub predicted: String,
    pub confidence: f32,
}

impl Model {
    /// JSON with every object's keys sorted (the classifier holds a hash
    /// map), so the same model always gives the same bytes.
    pub fn to_json(&self) -> String {
        let value = serde_json::to_value(self).expect("a model serializes");
        serde_json::to_string(&value).expect("a value serializes")
    }

    fn content_version(&self) -> String {
        let mut copy = self.clone();
        copy.model_version = String::new();
        let digest = Sha256::digest(copy.to_json().as_bytes());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("act-{hex}")
    }

    /// Sets `model_version` from the content again, after a tool edited the
    /// artifact (a version that does not match the content is refused).
    pub fn reseal(mut self) -> Self {
        self.model_version = self.content_version();
        self
    }

    /// Reads an artifact and checks it against the feature spec of this build.
    pub fn from_json(text: &str, spec: &FeatureSpec) -> Result<Self, String> {
        let model: Model = serde_json::from_str(text).map_err(|e| format!("not a model artifact: {e}"))?;
        if model.format != FORMAT {
            return Err(format!("artifact format {} is not {FORMAT}", model.format));
        }
        if model.feature_spec != SpecRecord::of(spec) {
            return Err(format!(
                "model {} expects other features (rate {} Hz, {} features) than this build makes (rate {} Hz, {} features)",
                model.model_version,
                model.feature_spec.rate_hz,
                model.feature_spec.names.len(),
                spec.rate_hz,
                spec.names().len()
            ));
        }
        if model.content_version() != model.model_version {
            return Err(format!("model {} was changed after training", model.model_version));
        }
        Ok(model)
    }

    /// Class probabilities for one feature vector, in `labels` order.
    pub fn probabilities(&self, features: &[f64]) -> Vec<f32> {
        let x = Array2::from_shape_vec((1, features.len()), features.to_vec()).expect("one row");
        self.classifier
            .probabilities(&self.scaler.apply(&x), self.labels.len())
            .remove(0)
    }

    /// The most likely activity and its probability.
    pub fn predict(&self, features: &[f64]) -> (&str, f32) {
        self.predict_from(&self.probabilities(features))
    }

    /// The most likely activity of the probabilities `p` (in `labels` order).
    pub fn predict_from(&self, p: &[f32]) -> (&str, f32) {
        let best = argmax(p);
        (&self.labels[best], p[best])
    }

    /// The verdict on one feature vector: its class, or unknown with why.
    pub fn verdict(&self, features: &[f64], min_confidence: Option<f32>) -> Verdict {
        let x = Array2::from_shape_vec((1, features.len()), features.to_vec()).expect("one row");
        let z = self.scaler.apply(&x);
        let mut p = self.classifier.probabilities(&z, self.labels.len()).remove(0);
        let sum: f32 = p.iter().sum();
        if !(p.iter().all(|v| v.is_finite() && *v >= 0.0) && (sum - 1.0).abs() < 1e-3) {
            p.iter_mut().for_each(|v| *v = 0.0);
            return Verdict {
                class: None,
                confidence: 0.0,
                reason: Some("invalid_probabilities"),
                probabilities: p,
            };
        }
        let best = argmax(&p);
        let confidence = p[best];
        let threshold = min_confidence.unwrap_or(self.gate.min_confidence);
        let z: Vec<f64> = z.row(0).to_vec();
        let (class, reason) = if !self.gate.familiar(&z, best) {
            (None, Some("unfamiliar"))
        } else if confidence < threshold {
            (None, Some("low_confidence"))
        } else {
            (Some(best), None)
        };
        Verdict {
            class,
            confidence,
            reason,
            probabilities: p,
        }
    }

    /// Measures the model on labelled windows: labels compared in their
    /// canonical spelling ([`crate::dataset::canonical_label`]), windows too
    /// short or unfit for features answered unknown as the tagger would.
    pub fn evaluate(&self, windows: &[LabelledWindow], spec: &FeatureSpec) -> Evaluation {
        use crate::dataset::canonical_label;
        let k = self.labels.len();
        let model_labels: Vec<String> = self.labels.iter().map(|l| canonical_label(l)).collect();
        let mut rows: Vec<String> = model_labels.clone();
        for w in windows {
            let l = canonical_label(&w.label);
            if !rows.contains(&l) {
                rows.push(l);
            }
        }
        let mut confusion = vec![vec![0usize; k + 1]; rows.len()];
        let (mut correct, mut scored, mut unknown) = (0usize, 0usize, 0usize);
        let mut pairs = Vec::new();
        let mut groups: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
        let mut results = Vec::with_capacity(windows.len());
        for w in windows {
            let truth = canonical_label(&w.label);
            let row = rows.iter().position(|l| *l == truth).expect("listed above");
            let verdict = match crate::serve::unfit(&w.accelerometer, &w.gyroscope, w.rate_hz, spec) {
                Some(why) => Verdict {
                    class: None,
                    confidence: 0.0,
                    reason: Some(why),
                    probabilities: vec![0.0; k],
                },
                None => self.verdict(&spec.extract(&w.accelerometer, &w.gyroscope, w.rate_hz), None),
            };
            let column = verdict.class.unwrap_or(k);
            confusion[row][column] += 1;
            let ok = verdict.class.is_some_and(|c| model_labels[c] == truth);
            if row < k {
                scored += 1;
                correct += usize::from(ok);
                if let Some(g) = &w.group {
                    let e = groups.entry(g.clone()).or_default();
                    e.0 += usize::from(ok);
                    e.1 += 1;
                }
            }
            if verdict.class.is_none() {
                unknown += 1;
            } else if row < k {
                pairs.push((verdict.confidence, ok));
            }
            results.push(WindowResult {
                id: w.id.clone(),
                label: w.label.clone(),
                predicted: verdict
                    .class
                    .map_or(crate::serve::UNKNOWN.to_owned(), |c| self.labels[c].clone()),
                confidence: verdict.confidence,
            });
        }
        let per_class = (0..k)
            .map(|c| {
                let (precision, recall, f1) = class_scores(&confusion, c);
                ClassScore {
                    label: self.labels[c].clone(),
                    precision,
                    recall,
                    f1,
                    support: confusion[c].iter().sum(),
                }
            })
            .collect();
        let mut columns = self.labels.clone();
        columns.push(crate::serve::UNKNOWN.to_owned());
        Evaluation {
            model_version: self.model_version.clone(),
            family: self.description.clone(),
            count: windows.len(),
            accuracy: correct as f64 / scored.max(1) as f64,
            macro_f1: macro_f1(&confusion, k),
            per_class,
            unknown_share: unknown as f64 / windows.len().max(1) as f64,
            ece: ece(&pairs),
            per_group: groups
                .into_iter()
                .map(|(g, (hit, n))| (g, hit as f64 / n.max(1) as f64))
                .collect(),
            rows,
            columns,
            confusion,
            windows: results,
        }
    }
}

/// A confusion matrix as text: rows true labels, columns predicted.
pub fn confusion_text(labels: &[String], confusion: &[Vec<usize>]) -> String {
    confusion_table(labels, labels, confusion)
}

/// [`confusion_text`] with rows and columns of their own.
pub fn confusion_table(rows: &[String], columns: &[String], confusion: &[Vec<usize>]) -> String {
    let w = rows.iter().chain(columns).map(String::len).max().unwrap_or(5).max(9);
    let mut out = format!("{:>w$} |", "true\\pred");
    for l in columns {
        out.push_str(&format!(" {l:>w$}"));
    }
    out.push('\n');
    for (l, row) in rows.iter().zip(confusion) {
        out.push_str(&format!("{l:>w$} |"));
        for c in row {
            out.push_str(&format!(" {c:>w$}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::parse_ts;

    fn data() -> Vec<LabelledWindow> {
        parse_ts(include_str!("../data/BasicMotions_TRAIN.ts"), 10.0).unwrap()
    }

    #[test]
    fn naive_bayes_probabilities_are_stable_and_agree_with_linfa_where_it_is_finite() {
        use linfa_bayes::NaiveBayes;
        let windows = data();
        let spec = FeatureSpec::default();
        let labels: Vec<String> = {
            let mut l: Vec<String> = windows.iter().map(|w| w.label.clone()).collect();
            l.sort();
            l.dedup();
            l
        };
        let (x, y) = matrix(&windows, &spec, &labels);
        let scaler = Scaler::fit(&x);
        let z = scaler.apply(&x);
        let Classifier::GaussianNb { model, .. } = (Candidate::GaussianNb { var_smoothing: 1e-3 })
            .fit(&z, &y, labels.len())
            .unwrap()
        else {
            unreachable!()
        };
        let params = NbClass::of(&model);
        let (linfa, order) = model.predict_proba(z.view());
        for (r, row) in z.rows().into_iter().enumerate() {
            let ours = stable_nb_probabilities(&params, &row.to_vec(), labels.len());
            for (col, class) in order.iter().enumerate() {
                let theirs = linfa[[r, col]];
                if theirs.is_finite() {
                    assert!(
                        (f64::from(ours[**class]) - theirs).abs() < 1e-4,
                        "row {r}: {ours:?} vs {theirs}"
                    );
                }
            }
        }
        // A window far from everything: linfa overflows, ours stays a distribution.
        let far = vec![1e6; z.ncols()];
        let (theirs, _) = model.predict_proba(Array2::from_shape_vec((1, far.len()), far.clone()).unwrap().view());
        let ours = stable_nb_probabilities(&params, &far, labels.len());
        assert!(
            ours.iter().all(|p| p.is_finite()) && (ours.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "{ours:?}"
        );
        println!("linfa on the far window: {theirs:?}");
    }

    #[test]
    fn training_is_reproducible_with_a_seed() {
        let spec = FeatureSpec::default();
        let (a, report) = train(&data(), &spec, 7, 5).unwrap();
        let (b, _) = train(&data(), &spec, 7, 5).unwrap();
        assert_eq!(a.to_json(), b.to_json());
        assert_eq!(a.model_version, b.model_version);
        assert_eq!(report.candidates.len(), CANDIDATES.len());
        assert_eq!(
            report.confusion.iter().flatten().sum::<usize>(),
            40 * CV_REPEATS as usize,
            "every window once per repeat"
        );
        assert!(a.cv_accuracy > 0.5, "cross-validated accuracy {}", a.cv_accuracy);
    }

    #[test]
    fn the_artifact_round_trips_and_refuses_another_feature_spec() {
        let spec = FeatureSpec::default();
        let (model, _) = train(&data(), &spec, 1, 4).unwrap();
        let loaded = Model::from_json(&model.to_json(), &spec).unwrap();
        for w in data() {
            let f = spec.extract(&w.accelerometer, &w.gyroscope, w.rate_hz);
            assert_eq!(loaded.probabilities(&f), model.probabilities(&f));
        }
        let other = FeatureSpec {
            rate_hz: 20.0,
            ..FeatureSpec::default()
        };
        let err = Model::from_json(&model.to_json(), &other).unwrap_err();
        assert!(err.contains("expects other features"), "{err}");
        let mut tampered: serde_json::Value = serde_json::from_str(&model.to_json()).unwrap();
        tampered["cv_accuracy"] = serde_json::json!(0.1);
        let err = Model::from_json(&tampered.to_string(), &spec).unwrap_err();
        assert!(err.contains("changed"), "{err}");
    }
}
