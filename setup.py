"""lmpipe: LSTM language models with TensorFlow/Keras, from Beam preprocessing to TF Serving."""

from setuptools import find_packages, setup

setup(
    name="lmpipe",
    version="0.1.0",
    description="Train LSTM language models with TensorFlow/Keras and serve text generation",
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["pipeline", "pipeline.*", "trainer", "trainer.*",
                                    "serving", "serving.*"]),
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "tensorflow-text>=2.21,<2.22",
        "keras>=3.10,<4",
        "mlflow>=3.1,<4",
        "psutil>=5.9,<8",  # MLflow's system metrics (CPU, memory) during training
        "apache-beam[tfrecord]>=2.77,<2.78",
        "google-crc32c>=1.5,<2",  # TFRecord checksums in C (Beam falls back to Python, and warns)
        "tensorflow-serving-api>=2.21,<2.22",
        "grpcio>=1.60,<2",
        "prometheus_client>=0.20,<1",
        "fastapi>=0.110,<1",
        "uvicorn>=0.29,<1",
        "pydantic>=2.6,<3",
        "pyyaml>=6,<7",
        "numpy>=1.26,<3",
        "matplotlib>=3.8,<4",
        "sacrebleu>=2.4,<3",
    ],
    extras_require={
        # scipy: chi-square tests; import-linter: the floors; pytest-xdist: two test processes
        "test": ["pytest>=8,<10", "scipy>=1.11,<2", "import-linter>=2.1,<3", "pytest-xdist>=3.5,<4"],
        "bench": ["torch>=2.4,<3"],  # bench/lstm_speed.py's PyTorch peer only
    },
    entry_points={"console_scripts": ["lmpipe=pipeline.orchestrate.cli:main"]},
)
