//! Prediction with a [`Classifier`]: texts tokenized and truncated, run in batches of similar
//! length (sorted by length, so a batch pads little), softmax over the labels, argmax. The
//! CLI's `classify eval|predict` and bindings call this; they only map arguments and print.

use crate::eval::{ClassificationReport, ConfusionMatrix};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

use super::Classifier;

/// How texts are run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PredictOptions {
    /// Tokens per text at most; longer texts keep their beginning.
    pub max_len: usize,
    /// Texts per forward pass.
    pub batch_size: usize,
}

impl Default for PredictOptions {
    fn default() -> Self {
        Self {
            max_len: 256,
            batch_size: 8,
        }
    }
}

/// One text's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Index of the most probable label (the first of equals).
    pub label: usize,
    /// Probability of each label, in the classifier's label order.
    pub probs: Vec<f32>,
}

/// Token ids of `text` as the classifier reads it (BOS when the tokenizer adds one, special
/// tokens as text), truncated to `max_len`.
pub fn encode(tok: &Tokenizer, text: &str, max_len: usize) -> Result<Vec<u32>> {
    let mut ids = tok.encode(text, true, false)?;
    ids.truncate(max_len);
    Ok(ids)
}

/// Index of the largest value (the first of equals; 0 for an empty slice).
pub fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &v)| if v > b.1 { (i, v) } else { b },
        )
        .0
}

impl Classifier {
    /// Softmax probabilities (one per label) of each row of token ids, in the rows' order.
    /// Rows run `batch_size` at a time, sorted by length; `progress(done, total)` is called
    /// after each batch. An empty row is an error (nothing to pool).
    pub fn probabilities(
        &self,
        rows: &[Vec<u32>],
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<f32>>> {
        if let Some(i) = rows.iter().position(Vec::is_empty) {
            return Err(Error::Input(format!("text {} has no tokens", i + 1)));
        }
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&i| rows[i].len());
        let mut out = vec![vec![]; rows.len()];
        let mut done = 0;
        for chunk in order.chunks(batch_size.max(1)) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| rows[i].clone()).collect();
            let x = self.batch(&batch, self.model.device())?;
            let logits = self.forward(&x)?.to_vec2::<f32>()?; // (B, L)
            for (&i, row) in chunk.iter().zip(logits) {
                out[i] = crate::sample::log_softmax(&row)
                    .into_iter()
                    .map(f32::exp)
                    .collect();
            }
            done += chunk.len();
            progress(done, rows.len());
        }
        Ok(out)
    }

    /// The label and probabilities of each text.
    pub fn predict(
        &self,
        tok: &Tokenizer,
        texts: &[&str],
        opts: &PredictOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Prediction>> {
        let rows: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| encode(tok, t, opts.max_len))
            .collect::<Result<_>>()?;
        let probs = self.probabilities(&rows, opts.batch_size, progress)?;
        Ok(probs
            .into_iter()
            .map(|probs| Prediction {
                label: argmax(&probs),
                probs,
            })
            .collect())
    }

    /// Accuracy, macro-F1, per-class scores and the confusion matrix of the predictions on
    /// `texts`, whose true label indices are `truth`.
    pub fn evaluate(
        &self,
        tok: &Tokenizer,
        texts: &[&str],
        truth: &[usize],
        opts: &PredictOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<ClassificationReport> {
        if texts.len() != truth.len() {
            return Err(Error::Input(format!(
                "{} texts but {} labels",
                texts.len(),
                truth.len()
            )));
        }
        let preds = self.predict(tok, texts, opts, progress)?;
        let mut cm = ConfusionMatrix::new(self.labels.clone());
        for (p, &t) in preds.iter().zip(truth) {
            cm.add(t, p.label)?;
        }
        Ok(cm.report())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_equals() {
        assert_eq!(argmax(&[0.1, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[0.4, 0.4, 0.2]), 0);
        assert_eq!(argmax(&[]), 0);
    }
}
