"""lmpipe's floors, each a folder; imports point down only (tests/test_import_contracts.py).

    pipeline.orchestrate   top: the command line, the scheduled run, its lock, schedules, Airflow
    pipeline.reports       the training reports (they read model folders and exports)
    serving                export, decoders, the server and its clients
    trainer                layers, models, training, MLflow runs and the registry
    pipeline.preprocess    the Beam stage: corpus -> dataset folder (documents or pairs)
    pipeline.core          ground: constants, errors, config, tokenizer, record formats
"""
