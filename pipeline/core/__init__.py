"""Ground floor: what every stage agrees on. Constants and on-disk file names (`constants`),
errors with their exit codes (`errors`), the typed config and its one loader (`config`,
`config_loader`), the tokenizer (`tokenizer`) and the TFRecord formats of documents and
pairs (`records`, `pair_records`). Imports nothing of lmpipe outside this folder."""
