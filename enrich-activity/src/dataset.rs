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
    /// Who recorded it (a subject of a recordings folder): cross-validation
    /// keeps each group's windows in one fold. `None` for formats without.
    pub group: Option<String>,
    /// An id for `eval --json` (the JSONL `id`, or file and position).
    pub id: String,
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
            id: format!("ts-{}", out.len()),
            group: None,
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
                    id: cells[0].to_owned(),
                    group: None,
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

/// Reads labelled data: a recordings folder ([`read_recordings`], cut as
/// `cut` says), or a file by its extension: `.ts` (at `ts_rate_hz`), `.csv`
/// ([`parse_csv`]) or `.jsonl` ([`parse_jsonl`]).
pub fn read_with(path: &std::path::Path, ts_rate_hz: f64, cut: &Cut) -> Result<Vec<LabelledWindow>, String> {
    if path.is_dir() {
        return read_recordings(path, cut);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parsed = match path.extension().and_then(|e| e.to_str()) {
        Some("ts") => parse_ts(&text, ts_rate_hz),
        Some("csv") => parse_csv(&text),
        Some("jsonl") => parse_jsonl(&text),
        _ => {
            return Err(format!(
                "{}: expected a recordings folder, or a .ts, .csv or .jsonl file",
                path.display()
            ))
        }
    };
    parsed.map_err(|e| format!("{}: {e}", path.display()))
}

/// [`read_with`] with the SDK's windows ([`Cut::default`]).
pub fn read(path: &std::path::Path, ts_rate_hz: f64) -> Result<Vec<LabelledWindow>, String> {
    read_with(path, ts_rate_hz, &Cut::default())
}

/// The activities a model is trained for and evaluated on, and the
/// spellings read as each (any case): `walking_upstairs` is walking.
pub const SYNONYMS: &[(&str, &[&str])] = &[
    (
        "walking",
        &[
            "walking",
            "walk",
            "walking_upstairs",
            "walking_downstairs",
            "upstairs",
            "downstairs",
        ],
    ),
    ("sitting", &["sitting", "sit", "seated"]),
    ("standing", &["standing", "stand"]),
    ("lying", &["lying", "laying", "lie", "lying_down", "laying_down"]),
    ("running", &["running", "run", "jogging"]),
];

/// A label in its canonical spelling: lower case, synonyms folded
/// ([`SYNONYMS`]); other labels only lower-cased.
pub fn canonical_label(label: &str) -> String {
    let lower = label.trim().to_ascii_lowercase();
    SYNONYMS
        .iter()
        .find(|(_, spellings)| spellings.contains(&lower.as_str()))
        .map_or(lower, |(canonical, _)| (*canonical).to_owned())
}

/// How a recording is cut into windows, the way the SDK sends them: every
/// length of `seconds`, each stepping by `hop_seconds`, within one run of
/// a single label (a window never spans two activities).
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub seconds: Vec<f64>,
    pub hop_seconds: f64,
    /// Keep the postural transitions (`stand_to_sit`, ...) as windows
    /// labelled `transition` (for testing the unknown gate); dropped by
    /// default.
    pub transitions: bool,
}

impl Default for Cut {
    fn default() -> Self {
        Cut {
            seconds: vec![2.5, 5.0, 10.0],
            hop_seconds: 2.5,
            transitions: false,
        }
    }
}

/// The label of a transition window when [`Cut::transitions`] keeps them.
pub const TRANSITION: &str = "transition";

/// Reads a folder of recordings (`*.csv` or `*.csv.gz`, as
/// `data/hapt/train/`): each file a `#` comment line naming
/// `subject=`, `recording=` and `sample_rate_hz=`, the header
/// `ax,ay,az,gx,gy,gz,label`, then one sample a line (acceleration in g with
/// gravity, Core Motion's sign; rotation rate in rad/s). Labels are
/// canonicalized ([`canonical_label`]); unlabelled samples are skipped, and
/// the transitions between postures too unless `cut` keeps them. Each
/// window's group is its subject.
pub fn read_recordings(dir: &std::path::Path, cut: &Cut) -> Result<Vec<LabelledWindow>, String> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read the folder {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".csv") || name.ends_with(".csv.gz")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("{}: no recordings (*.csv, *.csv.gz) in it", dir.display()));
    }
    let mut out = Vec::new();
    for f in &files {
        let text = read_text(f)?;
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("recording");
        out.extend(parse_recording(&text, name, cut).map_err(|e| format!("{}: {e}", f.display()))?);
    }
    if out.is_empty() {
        return Err(format!("{}: no labelled windows in its recordings", dir.display()));
    }
    Ok(out)
}

fn read_text(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if path.extension().and_then(|e| e.to_str()) == Some("gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_string(&mut text)
            .map_err(|e| format!("{}: not gzip text: {e}", path.display()))?;
        Ok(text)
    } else {
        String::from_utf8(bytes).map_err(|e| format!("{}: not UTF-8: {e}", path.display()))
    }
}

/// One recording's windows ([`read_recordings`]); `name` is for the ids.
pub fn parse_recording(text: &str, name: &str, cut: &Cut) -> Result<Vec<LabelledWindow>, DatasetError> {
    let mut lines = text.lines().enumerate();
    let (_, comment) = lines.next().ok_or(DatasetError::Empty)?;
    let field = |key: &str| {
        comment
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key).map(str::to_owned))
    };
    let bad_head = |problem: &str| DatasetError::Line {
        line: 1,
        problem: problem.to_owned(),
    };
    if !comment.starts_with('#') {
        return Err(bad_head(
            "the first line must be a # comment with subject= and sample_rate_hz=",
        ));
    }
    let subject = field("subject=").ok_or_else(|| bad_head("the comment names no subject="))?;
    let rate: f64 = field("sample_rate_hz=")
        .and_then(|r| r.parse().ok())
        .filter(|r: &f64| *r > 0.0)
        .ok_or_else(|| bad_head("the comment names no sample_rate_hz="))?;
    match lines.next() {
        Some((_, h)) if h.trim() == "ax,ay,az,gx,gy,gz,label" => {}
        _ => {
            return Err(DatasetError::Line {
                line: 2,
                problem: "the header must be ax,ay,az,gx,gy,gz,label".into(),
            })
        }
    }
    // Runs of one label: (label, samples).
    let mut runs: Vec<(String, Vec<[f32; 6]>)> = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |problem: String| DatasetError::Line { line: i + 1, problem };
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != 7 {
            return Err(bad(format!("expected 7 cells, found {}", cells.len())));
        }
        let mut v = [0f32; 6];
        for (slot, c) in v.iter_mut().zip(&cells[..6]) {
            *slot = c.parse().map_err(|e| bad(format!("not a number: {e}")))?;
        }
        let raw = cells[6];
        let label = if raw.is_empty() {
            String::new()
        } else if raw.contains("_to_") {
            TRANSITION.to_owned()
        } else {
            canonical_label(raw)
        };
        match runs.last_mut() {
            Some((l, samples)) if *l == label => samples.push(v),
            _ => runs.push((label, vec![v])),
        }
    }
    let mut out = Vec::new();
    let hop = ((cut.hop_seconds * rate).round() as usize).max(1);
    for (r, (label, samples)) in runs.iter().enumerate() {
        if label.is_empty() || (label == TRANSITION && !cut.transitions) {
            continue;
        }
        for &seconds in &cut.seconds {
            let n = (seconds * rate).round() as usize;
            if n == 0 || samples.len() < n {
                // A transition is shorter than most windows: kept whole.
                if label == TRANSITION && samples.len() >= (rate as usize) {
                    out.push(window(name, &subject, r, 0, label, rate, samples));
                }
                continue;
            }
            let mut start = 0;
            while start + n <= samples.len() {
                out.push(window(
                    name,
                    &subject,
                    r,
                    start,
                    label,
                    rate,
                    &samples[start..start + n],
                ));
                start += hop;
            }
        }
    }
    Ok(out)
}

fn window(
    name: &str,
    subject: &str,
    run: usize,
    start: usize,
    label: &str,
    rate: f64,
    s: &[[f32; 6]],
) -> LabelledWindow {
    let axis = |k: usize| s.iter().map(|v| v[k]).collect::<Vec<f32>>();
    LabelledWindow {
        id: format!("{name}:{run}:{start}:{}", s.len()),
        group: Some(format!("subject{subject}")),
        label: label.to_owned(),
        rate_hz: rate,
        accelerometer: Axes3 {
            x: axis(0),
            y: axis(1),
            z: axis(2),
        },
        gyroscope: Axes3 {
            x: axis(3),
            y: axis(4),
            z: axis(5),
        },
    }
}

/// One window a line, the ingest API's motion object with an id and a
/// label: `{"id", "label", "sample_rate_hz", "accelerometer": [[x,y,z],…],
/// "gyroscope": [[x,y,z],…]}` (an optional `"group"` names its subject).
pub fn parse_jsonl(text: &str) -> Result<Vec<LabelledWindow>, DatasetError> {
    #[derive(serde::Deserialize)]
    struct Line {
        id: serde_json::Value,
        label: String,
        sample_rate_hz: f64,
        accelerometer: Vec<[f32; 3]>,
        #[serde(default)]
        gyroscope: Vec<[f32; 3]>,
        #[serde(default)]
        group: Option<String>,
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(line).map_err(|e| DatasetError::Line {
            line: i + 1,
            problem: format!("not a window object: {e}"),
        })?;
        let axes = |s: &[[f32; 3]]| Axes3 {
            x: s.iter().map(|v| v[0]).collect(),
            y: s.iter().map(|v| v[1]).collect(),
            z: s.iter().map(|v| v[2]).collect(),
        };
        out.push(LabelledWindow {
            id: match l.id {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            },
            group: l.group,
            label: l.label,
            rate_hz: l.sample_rate_hz,
            accelerometer: axes(&l.accelerometer),
            gyroscope: axes(&l.gyroscope),
        });
    }
    if out.is_empty() {
        return Err(DatasetError::Empty);
    }
    Ok(out)
}

/// A window as one line of [`parse_jsonl`].
pub fn jsonl_line(w: &LabelledWindow) -> String {
    let triples =
        |a: &Axes3| -> Vec<[f32; 3]> { a.x.iter().zip(&a.y).zip(&a.z).map(|((x, y), z)| [*x, *y, *z]).collect() };
    serde_json::json!({
        "id": w.id,
        "label": w.label,
        "group": w.group,
        "sample_rate_hz": w.rate_hz,
        "accelerometer": triples(&w.accelerometer),
        "gyroscope": triples(&w.gyroscope),
    })
    .to_string()
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
