"""Entry point for the multi-process test: ``torchrun --nproc_per_node N tests/_ddp_script.py
CONFIG.json OUT_DIR`` trains the config's run with N processes (see tests/test_train.py)."""
import json
import sys

from difflab.training.config import TrainConfig
from difflab.training.trainer import train

if __name__ == "__main__":
    config = TrainConfig.from_dict(json.loads(open(sys.argv[1]).read()))
    train(config, sys.argv[2], progress=False, device="cpu")
