//! The activity model: one of several linfa families over standardized
//! [`FeatureSpec`] features — Gaussian naive Bayes (linfa-bayes), multinomial
//! logistic regression (linfa-logistic) and an RBF support vector machine
//! (linfa-svm, one-vs-rest with Platt-scaled probabilities) — the family and
//! its hyper-parameters chosen by repeated stratified k-fold cross-validation
//! on the training data only: the most accurate candidate, ties broken by the
//! lower cross-validated log-loss (confident over lucky), then by the order of
//! [`CANDIDATES`] (measured inference time is reported, but not reproducible
//! enough to decide). The scaler is fitted on each training fold only, and the chosen one
//! on all the data; it travels in the artifact, a versioned JSON file that
//! also carries the feature specification it expects.
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
pub const FORMAT: u32 = 2;

/// The feature specification as stored in an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecRecord {
    pub rate_hz: f64,
    pub bands: Vec<(f64, f64)>,
    pub names: Vec<String>,
}

impl SpecRecord {
    pub fn of(spec: &FeatureSpec) -> Self {
        SpecRecord {
            rate_hz: spec.rate_hz,
            bands: spec.bands.clone(),
            names: spec.names(),
        }
    }
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
    Candidate::GaussianNb { var_smoothing: 1e-6 },
    Candidate::GaussianNb { var_smoothing: 1e-3 },
    Candidate::GaussianNb { var_smoothing: 1e-1 },
    Candidate::Logistic { alpha: 1e-3 },
    Candidate::Logistic { alpha: 1e-2 },
    Candidate::Logistic { alpha: 1e-1 },
    Candidate::Logistic { alpha: 1.0 },
    Candidate::SvmRbf { c: 1.0, eps: 100.0 },
    Candidate::SvmRbf { c: 10.0, eps: 100.0 },
    Candidate::SvmRbf { c: 1.0, eps: 1000.0 },
    Candidate::SvmRbf { c: 10.0, eps: 1000.0 },
];

/// Cross-validation repeats, each with its own stratified folds.
pub const CV_REPEATS: u64 = 3;

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
                    .max_iterations(200)
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
    /// (candidate, cross-validated accuracy, log-loss, µs of inference per window)
    pub candidates: Vec<(String, f64, f64, f64)>,
    /// Cross-validated confusion of the chosen candidate (rows true, columns predicted).
    pub confusion: Vec<Vec<usize>>,
}

/// Class probabilities, one row per window, columns in class-index order.
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

/// Cross-validates every candidate of [`CANDIDATES`] with [`CV_REPEATS`]
/// repeats of stratified `folds`-fold cross-validation (folds drawn with
/// `seed`; the scaler fitted on each training fold only), keeps the most
/// accurate (then the lower log-loss, then the first listed), and fits it with
/// a scaler on all windows.
pub fn train(
    windows: &[LabelledWindow],
    spec: &FeatureSpec,
    seed: u64,
    folds: usize,
) -> Result<(Model, TrainReport), String> {
    let mut labels: Vec<String> = windows.iter().map(|w| w.label.clone()).collect();
    labels.sort();
    labels.dedup();
    let folds = folds.max(2);
    if labels.len() < 2 || windows.len() < folds {
        return Err(format!(
            "need at least 2 labels and {folds} windows, got {} and {}",
            labels.len(),
            windows.len()
        ));
    }
    let (x, y) = matrix(windows, spec, &labels);
    let k = labels.len();
    // Repeated stratified folds: each class's windows, shuffled by the seed,
    // are dealt round-robin into the folds, once per repeat.
    let mut rng = SampleRng::new(seed);
    let mut fold_of: Vec<Vec<usize>> = Vec::new();
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
    let mut candidates = Vec::new();
    struct Best {
        accuracy: f64,
        log_loss: f64,
        candidate: Candidate,
        confusion: Vec<Vec<usize>>,
    }
    let mut best: Option<Best> = None;
    for candidate in CANDIDATES {
        let (mut correct, mut seen, mut log_loss, mut micros) = (0usize, 0usize, 0.0f64, 0.0f64);
        let mut confusion = vec![vec![0usize; k]; k];
        for fold in &fold_of {
            for f in 0..folds {
                let test: Vec<usize> = (0..windows.len()).filter(|&i| fold[i] == f).collect();
                let train_rows: Vec<usize> = (0..windows.len()).filter(|&i| fold[i] != f).collect();
                if test.is_empty() {
                    continue;
                }
                let train_x = x.select(ndarray::Axis(0), &train_rows);
                let scaler = Scaler::fit(&train_x);
                let model = candidate.fit(&scaler.apply(&train_x), &y.select(ndarray::Axis(0), &train_rows), k)?;
                let test_x = scaler.apply(&x.select(ndarray::Axis(0), &test));
                let started = Instant::now();
                let p = model.probabilities(&test_x, k);
                micros += started.elapsed().as_secs_f64() * 1e6;
                for (r, &row) in test.iter().enumerate() {
                    let predicted = argmax(&p[r]);
                    confusion[y[row]][predicted] += 1;
                    correct += usize::from(predicted == y[row]);
                    let p_true = f64::from(p[r][y[row]]);
                    log_loss -= if p_true.is_finite() {
                        p_true.max(1e-15).ln()
                    } else {
                        1e-15f64.ln()
                    };
                    seen += 1;
                }
            }
        }
        let accuracy = correct as f64 / seen.max(1) as f64;
        let log_loss = log_loss / seen.max(1) as f64;
        let micros = micros / seen.max(1) as f64;
        candidates.push((candidate.to_string(), accuracy, log_loss, micros));
        // Measured time is not reproducible, so it never decides: a full tie
        // keeps the candidate listed first.
        let better = best.as_ref().is_none_or(|b| {
            accuracy > b.accuracy + 1e-12 || ((accuracy - b.accuracy).abs() <= 1e-12 && log_loss < b.log_loss - 1e-9)
        });
        if better {
            best = Some(Best {
                accuracy,
                log_loss,
                candidate,
                confusion,
            });
        }
    }
    let Best {
        accuracy,
        log_loss,
        candidate,
        confusion,
    } = best.expect("at least one candidate");
    let scaler = Scaler::fit(&x);
    let classifier = candidate.fit(&scaler.apply(&x), &y, k)?;
    let mut model = Model {
        format: FORMAT,
        model_version: String::new(),
        description: candidate.to_string(),
        feature_spec: SpecRecord::of(spec),
        labels,
        cv_accuracy: accuracy,
        cv_log_loss: log_loss,
        seed,
        scaler,
        classifier,
    };
    model.model_version = model.content_version();
    Ok((model, TrainReport { candidates, confusion }))
}

/// An evaluation on labelled windows.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub model_version: String,
    /// The model family and its hyper-parameters.
    pub family: String,
    pub windows: usize,
    pub accuracy: f64,
    /// (label, precision, recall)
    pub per_class: Vec<(String, f64, f64)>,
    pub labels: Vec<String>,
    /// rows: true label, columns: predicted label
    pub confusion: Vec<Vec<usize>>,
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

    pub fn evaluate(&self, windows: &[LabelledWindow], spec: &FeatureSpec) -> Evaluation {
        let k = self.labels.len();
        let mut confusion = vec![vec![0usize; k]; k];
        let mut correct = 0;
        for w in windows {
            let f = spec.extract(&w.accelerometer, &w.gyroscope, w.rate_hz);
            let predicted = argmax(&self.probabilities(&f));
            if let Some(truth) = self.labels.iter().position(|l| *l == w.label) {
                confusion[truth][predicted] += 1;
                correct += usize::from(truth == predicted);
            }
        }
        let per_class = (0..k)
            .map(|c| {
                let tp = confusion[c][c] as f64;
                let predicted: usize = confusion.iter().map(|row| row[c]).sum();
                let actual: usize = confusion[c].iter().sum();
                let ratio = |n: usize| if n == 0 { 0.0 } else { tp / n as f64 };
                (self.labels[c].clone(), ratio(predicted), ratio(actual))
            })
            .collect();
        Evaluation {
            model_version: self.model_version.clone(),
            family: self.description.clone(),
            windows: windows.len(),
            accuracy: if windows.is_empty() {
                0.0
            } else {
                correct as f64 / windows.len() as f64
            },
            per_class,
            labels: self.labels.clone(),
            confusion,
        }
    }
}

/// A confusion matrix as text: rows true labels, columns predicted.
pub fn confusion_text(labels: &[String], confusion: &[Vec<usize>]) -> String {
    let w = labels.iter().map(String::len).max().unwrap_or(5).max(9);
    let mut out = format!("{:>w$} |", "true\\pred");
    for l in labels {
        out.push_str(&format!(" {l:>w$}"));
    }
    out.push('\n');
    for (l, row) in labels.iter().zip(confusion) {
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
