//! A validator for the Prometheus text exposition format 0.0.4, strict enough for wsgate's own
//! `/metrics` output. Test code only: the tests render metrics (in process or over HTTP) and check
//! the text with [`validate_exposition`].

use std::collections::BTreeMap;

/// Checks `text` against the text exposition format 0.0.4, strictly enough for our own output:
/// every line ends in `\n`; every sample's family has `# HELP` and `# TYPE` before its first
/// sample; a family's samples are contiguous; names match `[a-zA-Z_:][a-zA-Z0-9_:]*` and label
/// names `[a-zA-Z_][a-zA-Z0-9_]*`; label values are properly escaped; values are floats (`NaN`,
/// `+Inf`, `-Inf` included); no sample repeats; counters are not negative; a histogram's buckets
/// have `le`, increase in `le` and in count, end in `+Inf`, and that count equals `_count`, with
/// a `_sum`.
///
/// # Errors
/// The first problem found, with its line number.
pub fn validate_exposition(text: &str) -> Result<(), String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("exposition does not end with a line feed".into());
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut finished: Vec<String> = Vec::new(); // families whose samples have ended
    let mut current: Option<String> = None;
    let mut seen: std::collections::BTreeSet<String> = Default::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let err = |m: String| format!("line {n}: {m}: {line:?}");
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let mut parts = rest.splitn(3, ' ');
            let keyword = parts.next().unwrap_or("");
            if keyword != "HELP" && keyword != "TYPE" {
                continue; // a comment
            }
            let name = parts.next().ok_or_else(|| err("no metric name".into()))?;
            check_metric_name(name).map_err(err)?;
            let arg = parts.next();
            if current.as_deref() != Some(name) && families.get(name).is_some_and(|f| f.samples > 0)
            {
                return Err(err(format!("{keyword} after the samples of {name}")));
            }
            let fam = families.entry(name.to_string()).or_default();
            match keyword {
                "HELP" => {
                    if fam.help {
                        return Err(err("second HELP".into()));
                    }
                    check_help(arg.unwrap_or("")).map_err(err)?;
                    fam.help = true;
                }
                _ => {
                    if fam.kind.is_some() {
                        return Err(err("second TYPE".into()));
                    }
                    let kind = arg.ok_or_else(|| err("TYPE without a type".into()))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err(format!("unknown type {kind:?}")));
                    }
                    if fam.samples > 0 {
                        return Err(err("TYPE after samples".into()));
                    }
                    fam.kind = Some(kind.to_string());
                }
            }
            continue;
        }
        let s = parse_sample(line).map_err(err)?;
        let family_name = family_of(&s.name, &families);
        let fam = families
            .get_mut(&family_name)
            .ok_or_else(|| err(format!("sample before HELP and TYPE of {family_name}")))?;
        let kind = fam
            .kind
            .clone()
            .ok_or_else(|| err(format!("sample before TYPE of {family_name}")))?;
        if !fam.help {
            return Err(err(format!("sample before HELP of {family_name}")));
        }
        if current.as_deref() != Some(family_name.as_str()) {
            if finished.contains(&family_name) {
                return Err(err(format!("samples of {family_name} are not contiguous")));
            }
            if let Some(prev) = current.take() {
                finished.push(prev);
            }
            current = Some(family_name.clone());
        }
        fam.samples += 1;
        let key = format!("{}{:?}", s.name, s.labels);
        if !seen.insert(key) {
            return Err(err("duplicate sample".into()));
        }
        match kind.as_str() {
            "counter" if s.value < 0.0 || s.value.is_nan() => {
                return Err(err("negative or NaN counter".into()));
            }
            "histogram" => {
                let mut others: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                others.sort();
                let h = fam.histograms.entry(format!("{others:?}")).or_default();
                if s.name == format!("{family_name}_bucket") {
                    let le = s
                        .labels
                        .iter()
                        .find(|(k, _)| k == "le")
                        .ok_or_else(|| err("bucket without le".into()))?;
                    let le = parse_value(&le.1).map_err(err)?;
                    if let Some(&(prev_le, prev_count)) = h.buckets.last() {
                        if le <= prev_le {
                            return Err(err("bucket le not increasing".into()));
                        }
                        if s.value < prev_count {
                            return Err(err("bucket counts not cumulative".into()));
                        }
                    }
                    h.buckets.push((le, s.value));
                } else if s.name == format!("{family_name}_sum") {
                    h.sum = true;
                } else if s.name == format!("{family_name}_count") {
                    h.count = Some(s.value);
                } else {
                    return Err(err("histogram sample is not _bucket, _sum or _count".into()));
                }
            }
            "counter" | "gauge" | "untyped" if s.name != family_name => {
                return Err(err(format!(
                    "sample name differs from family {family_name}"
                )));
            }
            _ => {}
        }
    }
    for (name, fam) in &families {
        for (labels, h) in &fam.histograms {
            let what = format!("histogram {name}{labels}");
            let Some(&(le, inf)) = h.buckets.last() else {
                return Err(format!("{what}: no buckets"));
            };
            if le != f64::INFINITY {
                return Err(format!("{what}: last bucket is not le=\"+Inf\""));
            }
            match h.count {
                Some(c) if c == inf => {}
                Some(c) => return Err(format!("{what}: +Inf bucket {inf} != _count {c}")),
                None => return Err(format!("{what}: no _count")),
            }
            if !h.sum {
                return Err(format!("{what}: no _sum"));
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct Family {
    help: bool,
    kind: Option<String>,
    samples: usize,
    histograms: BTreeMap<String, Histogram>,
}

#[derive(Default)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    sum: bool,
    count: Option<f64>,
}

struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// The family a sample belongs to: itself, or for `_bucket`/`_sum`/`_count` the histogram (or
/// summary) it is a part of, when one is declared.
fn family_of(name: &str, families: &BTreeMap<String, Family>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if families
                .get(base)
                .and_then(|f| f.kind.as_deref())
                .is_some_and(|k| k == "histogram" || k == "summary")
            {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("bad label name {name:?}"))
    }
}

/// HELP text may escape only `\\` and `\n`.
fn check_help(help: &str) -> Result<(), String> {
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
            return Err("bad escape in HELP".into());
        }
    }
    Ok(())
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        // Rust's parser also takes "inf"/"infinity"/"nan", which the format does not.
        v if v
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            Err(format!("bad value {v:?}"))
        }
        v => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut s = after;
        loop {
            s = s.trim_start_matches(' ');
            if let Some(r) = s.strip_prefix('}') {
                s = r;
                break;
            }
            let eq = s.find('=').ok_or("label without =")?;
            let lname = s[..eq].trim_end_matches(' ');
            check_label_name(lname)?;
            s = s[eq + 1..].trim_start_matches(' ');
            s = s.strip_prefix('"').ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = s.char_indices();
            let end = loop {
                match chars.next() {
                    None => return Err("unterminated label value".into()),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err("bad escape in label value".into()),
                    },
                    Some((_, '\n')) => return Err("raw line feed in label value".into()),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.iter().any(|(k, _): &(String, String)| k == lname) {
                return Err(format!("label {lname} repeated"));
            }
            labels.push((lname.to_string(), value));
            s = s[end + 1..].trim_start_matches(' ');
            if let Some(r) = s.strip_prefix(',') {
                s = r;
            } else if !s.starts_with('}') {
                return Err("expected , or } after a label".into());
            }
        }
        rest = s;
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut fields = rest.split(' ').filter(|f| !f.is_empty());
    let value = parse_value(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    labels.sort();
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}
