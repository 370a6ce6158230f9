"""lmpipe's ground floor (config, tokenizer, record format), Beam preprocessing and the CLI.

Floors (imports only point down):
  ground:  constants, errors, config, config_loader, tokenizer, records
  middle:  corpus, reading, vocabulary, split_stats, tokenize_fn, preprocess
  top:     cli (nothing imports it)
"""
