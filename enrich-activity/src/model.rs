//! The activity model: a Gaussian naive Bayes classifier (linfa-bayes) over
//! [`FeatureSpec`] features, its smoothing chosen among candidates by k-fold
//! cross-validated accuracy (then by inference cost), stored as a versioned
//! JSON artifact that carries the feature specification it expects.
//!
//! Training is reproducible: the folds are drawn from the seed and the fit is
//! closed-form. (linfa-trees was tried first; its trees depend on hash-map
//! iteration order, so the same data gives different trees from run to run.)

use std::time::Instant;

use context_schemas::sample::SampleRng;
use linfa::prelude::*;
use linfa_bayes::{GaussianNb, NaiveBayes};
use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::LabelledWindow;
use crate::features::FeatureSpec;

/// The artifact format this build reads and writes.
pub const FORMAT: u32 = 1;

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
    pub seed: u64,
    pub classifier: GaussianNb<f64, usize>,
}

/// What [`train`] reports besides the model.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// (candidate, k-fold accuracy, µs per window for features + inference)
    pub candidates: Vec<(String, f64, f64)>,
    /// Cross-validated confusion of the chosen candidate (rows true, columns predicted).
    pub confusion: Vec<Vec<usize>>,
}

const SMOOTHING: [f64; 4] = [1e-9, 1e-6, 1e-3, 1e-1];

fn fit(x: &Array2<f64>, y: &Array1<usize>, smoothing: f64) -> Result<GaussianNb<f64, usize>, String> {
    GaussianNb::params()
        .var_smoothing(smoothing)
        .fit(&Dataset::new(x.clone(), y.clone()))
        .map_err(|e| format!("training failed: {e}"))
}

/// Class probabilities, one row per window, columns in class-index order.
fn probabilities(nb: &GaussianNb<f64, usize>, x: &Array2<f64>, classes: usize) -> Vec<Vec<f32>> {
    let (p, order) = nb.predict_proba(x.view());
    (0..x.nrows())
        .map(|row| {
            let mut out = vec![0f32; classes];
            for (col, class) in order.iter().enumerate() {
                if **class < classes {
                    out[**class] = p[[row, col]] as f32;
                }
            }
            out
        })
        .collect()
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

/// Trains every candidate with `folds`-fold cross-validation (folds drawn
/// with `seed`), keeps the most accurate (the cheaper on a tie), and fits it
/// on all windows.
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
    let mut order: Vec<usize> = (0..windows.len()).collect();
    let mut rng = SampleRng::new(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    let mut candidates = Vec::new();
    let mut best: Option<(f64, f64, f64, Vec<Vec<usize>>)> = None;
    for smoothing in SMOOTHING {
        let mut correct = 0;
        let mut confusion = vec![vec![0usize; labels.len()]; labels.len()];
        let mut micros = 0.0;
        for f in 0..folds {
            let test: Vec<usize> = order.iter().copied().skip(f).step_by(folds).collect();
            let train_rows: Vec<usize> = order.iter().copied().filter(|i| !test.contains(i)).collect();
            let nb = fit(
                &x.select(ndarray::Axis(0), &train_rows),
                &y.select(ndarray::Axis(0), &train_rows),
                smoothing,
            )?;
            let started = Instant::now();
            let test_windows: Vec<LabelledWindow> = test.iter().map(|&i| windows[i].clone()).collect();
            let (tx, _) = matrix(&test_windows, spec, &labels);
            let p = probabilities(&nb, &tx, labels.len());
            micros += started.elapsed().as_secs_f64() * 1e6 / test.len().max(1) as f64 / folds as f64;
            for (k, &row) in test.iter().enumerate() {
                let predicted = argmax(&p[k]);
                confusion[y[row]][predicted] += 1;
                correct += usize::from(predicted == y[row]);
            }
        }
        let accuracy = correct as f64 / windows.len() as f64;
        candidates.push((
            format!("Gaussian naive Bayes, var_smoothing {smoothing:e}"),
            accuracy,
            micros,
        ));
        if best.as_ref().is_none_or(|(acc, _, _, _)| accuracy > *acc + 1e-12) {
            best = Some((accuracy, micros, smoothing, confusion));
        }
    }
    let (accuracy, _, smoothing, confusion) = best.expect("at least one candidate");
    let mut model = Model {
        format: FORMAT,
        model_version: String::new(),
        description: format!("Gaussian naive Bayes, var_smoothing {smoothing:e}"),
        feature_spec: SpecRecord::of(spec),
        labels,
        cv_accuracy: accuracy,
        seed,
        classifier: fit(&x, &y, smoothing)?,
    };
    model.model_version = model.content_version();
    Ok((model, TrainReport { candidates, confusion }))
}

/// An evaluation on labelled windows.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub model_version: String,
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
        probabilities(&self.classifier, &x, self.labels.len()).remove(0)
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
    fn training_is_reproducible_with_a_seed() {
        let spec = FeatureSpec::default();
        let (a, report) = train(&data(), &spec, 7, 5).unwrap();
        let (b, _) = train(&data(), &spec, 7, 5).unwrap();
        assert_eq!(a.to_json(), b.to_json());
        assert_eq!(a.model_version, b.model_version);
        assert_eq!(report.candidates.len(), SMOOTHING.len());
        assert_eq!(report.confusion.iter().flatten().sum::<usize>(), 40);
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
