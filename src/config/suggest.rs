//! "Did you mean …?": the nearest of a few known words to a mistyped one, for the config's unknown
//! keys and sections and the command line's unknown commands, options and log levels. Pure; the
//! callers put the hint into their own error text.

/// The candidate nearest to `word` by edit distance (case-insensitive), if it is near enough to be a
/// typo: at most one edit for words of up to four letters, a third of the word's length beyond.
/// Ties go to the earlier candidate, so callers list the likelier words first.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let budget = (word.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|&(d, _)| d <= budget)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// `" (did you mean `x`?)"` for an error line, or nothing.
pub fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    nearest(word, candidates).map_or_else(String::new, |c| format!(" (did you mean `{c}`?)"))
}

/// Optimal string alignment distance: insertions, deletions, substitutions and transpositions of
/// two neighbours each cost one (`lisen` → `listen` is 1, `wokrers` → `workers` is 1).
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows: the one before last (for transpositions), the last, and this one.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut last: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (last[j] + 1).min(row[j - 1] + 1).min(last[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut last, row);
    }
    last[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_the_word_meant() {
        let keys = ["listen", "workers", "queue", "tls"];
        assert_eq!(nearest("lisen", keys), Some("listen"));
        assert_eq!(nearest("wokrers", keys), Some("workers"));
        assert_eq!(nearest("Workers", keys), Some("workers"));
        assert_eq!(nearest("queu", keys), Some("queue"));
        assert_eq!(nearest("tsl", keys), Some("tls"));
        let levels = ["off", "error", "warn", "info", "debug", "trace"];
        assert_eq!(nearest("debugg", levels), Some("debug"));
        assert_eq!(nearest("warning", levels), None); // three edits from warn: not a typo
    }

    #[test]
    fn words_far_from_every_candidate_get_no_hint() {
        assert_eq!(nearest("bogus", ["listen", "workers"]), None);
        assert_eq!(nearest("", ["a"]), Some("a")); // one edit away
        assert_eq!(nearest("x", ["listen"]), None);
        assert_eq!(hint("bogus", ["listen"]), "");
        assert_eq!(hint("lisen", ["listen"]), " (did you mean `listen`?)");
    }

    #[test]
    fn distance_counts_edits() {
        assert_eq!(distance("", ""), 0);
        assert_eq!(distance("abc", "abc"), 0);
        assert_eq!(distance("abc", "acb"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
    }
}
