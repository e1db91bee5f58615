//! What finished stages left for later ones: their phase and their outputs, the `stages`
//! variable of templates (`{{ stages.NAME.outputs.KEY }}`) and CEL (`stages.NAME.outputs.KEY`,
//! `stages.NAME.phase`).

use std::collections::BTreeMap;

/// Most output keys one stage keeps.
pub const MAX_OUTPUTS: usize = 32;
/// Longest output value in bytes; longer ones are cut (at a character boundary).
pub const MAX_OUTPUT_BYTES: usize = 1024;

/// The phase and outputs of one finished stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StageResult {
    /// The stage's phase as the status writes it: `Succeeded`, `Failed`, `Skipped`, …
    pub phase: String,
    /// The stage's outputs.
    pub outputs: BTreeMap<String, String>,
}

/// The finished stages of a run, by name.
pub type Stages = BTreeMap<String, StageResult>;

/// Keeps `outputs` within [`MAX_OUTPUTS`] keys (the first in key order) and values within
/// [`MAX_OUTPUT_BYTES`].
pub fn bound(outputs: &mut BTreeMap<String, String>) {
    while outputs.len() > MAX_OUTPUTS {
        outputs.pop_last();
    }
    for v in outputs.values_mut() {
        if v.len() > MAX_OUTPUT_BYTES {
            let mut end = MAX_OUTPUT_BYTES;
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            v.truncate(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_bounded() {
        let mut o: BTreeMap<String, String> = (0..40)
            .map(|i| (format!("k{i:02}"), "é".repeat(600)))
            .collect();
        bound(&mut o);
        assert_eq!(o.len(), MAX_OUTPUTS);
        assert!(o.contains_key("k00") && !o.contains_key("k39"));
        assert!(
            o.values()
                .all(|v| v.len() <= MAX_OUTPUT_BYTES && v.len() >= 1022)
        );
    }
}
