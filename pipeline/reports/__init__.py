"""Insight reports (above serving: they use the trainer's models and the serving decoders).

    gradient_flow   why LSTMs beat vanilla RNNs: dL_T/dh_t against distance, long-range task
    gates           what the gates do on a text: heatmaps, distributions, saturation
    decoding        how decoders differ: length, log-probability, diversity, repetition, speed

Each writes PNG plots and the CSV/JSON of the numbers behind them into one folder.
"""
