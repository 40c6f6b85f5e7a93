//! Median, minimum and maximum of repeated runs: what every figure in the report is.

use serde::Serialize;

/// One figure: the median of several runs, with the spread and the raw runs.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Summary {
    /// Summarises `runs`; `None` when there are none.
    pub fn of(runs: Vec<f64>) -> Option<Self> {
        let mut sorted = runs.clone();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            f64::midpoint(sorted[mid - 1], sorted[mid])
        } else {
            sorted[mid]
        };
        Some(Self {
            median,
            min,
            max,
            runs,
        })
    }
}

/// Samples gathered per figure `K`, in the order the figures first appeared.
pub struct Samples<K> {
    figures: Vec<(K, Vec<f64>)>,
}

impl<K> Default for Samples<K> {
    fn default() -> Self {
        Self {
            figures: Vec::new(),
        }
    }
}

impl<K: PartialEq> Samples<K> {
    pub fn push(&mut self, key: K, value: f64) {
        match self.figures.iter_mut().find(|(known, _)| *known == key) {
            Some((_, values)) => values.push(value),
            None => self.figures.push((key, vec![value])),
        }
    }

    /// Every figure with its summary, in first-seen order.
    pub fn summaries(self) -> Vec<(K, Summary)> {
        self.figures
            .into_iter()
            .filter_map(|(name, values)| Summary::of(values).map(|summary| (name, summary)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = Summary::of(vec![5.0, 1.0, 3.0]).expect("three runs");
        assert_eq!((odd.median, odd.min, odd.max), (3.0, 1.0, 5.0));
        let even = Summary::of(vec![4.0, 1.0, 3.0, 2.0]).expect("four runs");
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        assert!(Summary::of(Vec::new()).is_none());
    }

    #[test]
    fn samples_keep_first_seen_order() {
        let mut samples = Samples::default();
        samples.push("b", 1.0);
        samples.push("a", 2.0);
        samples.push("b", 3.0);
        let names: Vec<_> = samples
            .summaries()
            .into_iter()
            .map(|(n, s)| (n, s.runs))
            .collect();
        assert_eq!(names, [("b", vec![1.0, 3.0]), ("a", vec![2.0])]);
    }
}
