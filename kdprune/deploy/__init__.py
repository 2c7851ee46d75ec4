"""What the MCU engineer flashes beside the model. Today: the portable C99 post-processing (``c/kdp_postprocess.h``,
``c/kdp_postprocess.c``), checked against the host decode by tests/test_deploy_c.py. The kit a run writes (the model as
a C array, the I/O header, the TFLM example) is built on it next."""

from pathlib import Path

C_DIR = Path(__file__).resolve().parent / "c"  # the C sources, shipped with the package
