//! Labelled motion windows for training and evaluation.
//!
//! The UEA/sktime `.ts` format (as `data/BasicMotions_TRAIN.ts`): header
//! lines start with `#` or `@` (`@classLabel true A B …` lists the labels);
//! each data line holds six comma-separated series separated by `:`
//! (accelerometer x, y, z, gyroscope x, y, z) and ends with `:label`.

use context_schemas::Axes3;
use thiserror::Error;

/// One labelled window.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledWindow {
    pub label: String,
    pub rate_hz: f64,
    pub accelerometer: Axes3,
    pub gyroscope: Axes3,
}

#[derive(Debug, Error, PartialEq)]
pub enum DatasetError {
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("no labelled windows in the data")]
    Empty,
}

/// Parses a `.ts` file whose series were sampled at `rate_hz`.
pub fn parse_ts(text: &str, rate_hz: f64) -> Result<Vec<LabelledWindow>, DatasetError> {
    let mut labels: Option<Vec<String>> = None;
    let mut out = Vec::new();
    let mut in_data = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let bad = |problem: String| DatasetError::Line { line: i + 1, problem };
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('@') {
            let mut words = header.split_whitespace();
            match words.next().map(str::to_ascii_lowercase).as_deref() {
                Some("classlabel") if words.next() == Some("true") => {
                    labels = Some(words.map(str::to_owned).collect());
                }
                Some("data") => in_data = true,
                _ => {}
            }
            continue;
        }
        if !in_data {
            return Err(bad("a data line before @data".into()));
        }
        let parts: Vec<&str> = line.split(':').collect();
        if parts.len() != 7 {
            return Err(bad(format!(
                "expected 6 series and a label, found {} fields",
                parts.len()
            )));
        }
        let label = parts[6].trim().to_owned();
        if let Some(known) = &labels {
            if !known.contains(&label) {
                return Err(bad(format!("label `{label}` is not declared in @classLabel")));
            }
        }
        let mut series = Vec::with_capacity(6);
        for (c, part) in parts[..6].iter().enumerate() {
            let values = part
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<Vec<f32>, _>>()
                .map_err(|e| bad(format!("series {} has a value that is not a number: {e}", c + 1)))?;
            series.push(values);
        }
        let n = series[0].len();
        if series.iter().any(|s| s.len() != n) || n == 0 {
            return Err(bad("the six series differ in length".into()));
        }
        let mut s = series.into_iter();
        let mut next = || s.next().expect("six series");
        out.push(LabelledWindow {
            label,
            rate_hz,
            accelerometer: Axes3 {
                x: next(),
                y: next(),
                z: next(),
            },
            gyroscope: Axes3 {
                x: next(),
                y: next(),
                z: next(),
            },
        });
    }
    if out.is_empty() {
        return Err(DatasetError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_dataset_parses() {
        let text = include_str!("../data/BasicMotions_TRAIN.ts");
        let windows = parse_ts(text, 10.0).unwrap();
        assert_eq!(windows.len(), 40);
        assert!(windows
            .iter()
            .all(|w| w.accelerometer.len() == Some(100) && w.gyroscope.len() == Some(100)));
        let mut labels: Vec<&str> = windows.iter().map(|w| w.label.as_str()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels, vec!["Badminton", "Running", "Standing", "Walking"]);
    }

    #[test]
    fn bad_lines_are_reported_with_their_number() {
        let err = parse_ts("@classLabel true A\n@data\n1,2:1:1:1:1:1:A\n", 10.0).unwrap_err();
        assert!(
            err.to_string().contains("line 3") && err.to_string().contains("length"),
            "{err}"
        );
        let err = parse_ts("@data\n1:1:1:1:1:x:A\n", 10.0).unwrap_err();
        assert!(err.to_string().contains("not a number"), "{err}");
        let err = parse_ts("@classLabel true A\n@data\n1:1:1:1:1:1:B\n", 10.0).unwrap_err();
        assert!(err.to_string().contains("`B`"), "{err}");
        assert_eq!(parse_ts("@data\n", 10.0).unwrap_err(), DatasetError::Empty);
    }
}
