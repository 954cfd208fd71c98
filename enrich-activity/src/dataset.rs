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

/// Parses the CSV format for new labelled data: a header line, then one row
/// per sample, rows of one window together and in time order:
///
/// ```text
/// window,label,rate_hz,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z
/// w1,walking,50,0.01,-0.98,0.12,0.0,0.1,0.0
/// ```
///
/// Acceleration in g, rotation rate in rad/s, as the SDK sends them.
pub fn parse_csv(text: &str) -> Result<Vec<LabelledWindow>, DatasetError> {
    let mut out: Vec<(String, LabelledWindow)> = Vec::new();
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let header = lines.next().map(|(_, h)| h.trim().to_owned()).unwrap_or_default();
    if header != "window,label,rate_hz,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z" {
        return Err(DatasetError::Line {
            line: 1,
            problem: "the header must be window,label,rate_hz,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z".into(),
        });
    }
    for (i, line) in lines {
        let bad = |problem: String| DatasetError::Line { line: i + 1, problem };
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != 9 {
            return Err(bad(format!("expected 9 cells, found {}", cells.len())));
        }
        let nums = cells[2..]
            .iter()
            .map(|c| c.parse::<f64>())
            .collect::<Result<Vec<f64>, _>>()
            .map_err(|e| bad(format!("not a number: {e}")))?;
        if out.last().map(|(id, _)| id.as_str()) != Some(cells[0]) {
            if out.iter().any(|(id, _)| id == cells[0]) {
                return Err(bad(format!("the rows of window `{}` are not together", cells[0])));
            }
            out.push((
                cells[0].to_owned(),
                LabelledWindow {
                    label: cells[1].to_owned(),
                    rate_hz: nums[0],
                    accelerometer: Axes3::default(),
                    gyroscope: Axes3::default(),
                },
            ));
        }
        let w = &mut out.last_mut().expect("pushed above").1;
        for (axis, v) in [&mut w.accelerometer.x, &mut w.accelerometer.y, &mut w.accelerometer.z]
            .into_iter()
            .zip(&nums[1..4])
        {
            axis.push(*v as f32);
        }
        for (axis, v) in [&mut w.gyroscope.x, &mut w.gyroscope.y, &mut w.gyroscope.z]
            .into_iter()
            .zip(&nums[4..7])
        {
            axis.push(*v as f32);
        }
    }
    if out.is_empty() {
        return Err(DatasetError::Empty);
    }
    Ok(out.into_iter().map(|(_, w)| w).collect())
}

/// Reads a data file by its extension: `.ts` (at `ts_rate_hz`) or `.csv`.
pub fn read(path: &std::path::Path, ts_rate_hz: f64) -> Result<Vec<LabelledWindow>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parsed = match path.extension().and_then(|e| e.to_str()) {
        Some("ts") => parse_ts(&text, ts_rate_hz),
        Some("csv") => parse_csv(&text),
        _ => return Err(format!("{}: expected a .ts or .csv file", path.display())),
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod csv_tests {
    use super::*;

    #[test]
    fn csv_windows_group_by_id() {
        let text = "window,label,rate_hz,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z\n\
                    a,walking,50,0.1,0.2,0.3,1,2,3\na,walking,50,0.4,0.5,0.6,4,5,6\nb,standing,50,0,0,1,0,0,0\n";
        let w = parse_csv(text).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            (w[0].label.as_str(), w[0].accelerometer.y.clone()),
            ("walking", vec![0.2, 0.5])
        );
        assert_eq!(w[1].gyroscope.len(), Some(1));
        assert!(parse_csv("a,b\n").is_err());
        let split = "window,label,rate_hz,acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z\na,x,1,0,0,0,0,0,0\nb,x,1,0,0,0,0,0,0\na,x,1,0,0,0,0,0,0\n";
        assert!(parse_csv(split).unwrap_err().to_string().contains("not together"));
    }
}
