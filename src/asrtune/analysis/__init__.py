"""Evidence beyond WER: layer-wise CKA, sweep tables, plots and reports."""
