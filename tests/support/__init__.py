"""Helpers the tests import (``from support.paths import REPO``): tests/ is on ``sys.path`` under pytest, as the
folder of the root ``conftest.py``.

* ``paths``          the repository and the real fixtures in ../shared (``BIOMEDICA_SHARED``)
* ``models``         tiny random models saved like real checkpoints (DINOv2)
* ``recipes``        training recipes under ``accelerate launch`` (2 CPU ranks), their logs and DDP teardown
* ``hub_server``     a loopback Hugging Face Hub serving dataset folders (also ``python tests/support/hub_server.py``)
* ``pmc_server``     a loopback PMC (cloud bucket, legacy FTP mirror over HTTP) with injected faults
* ``efetch_server``  a loopback NCBI E-utilities
* ``hostile_inputs`` generated hostile packages (huge, truncated, bombs) and a measured subprocess run
* ``flat_layout``    a built folder moved into the older flat layout
* ``ddp_probe``      a script: runs a recipe entry point, recording its DDP teardown order
"""
