"""Train, evaluate and export the Iris BNN: the same code path as ``tfp-bnn iris``.

    python scripts/train_iris.py --seeds 5 --out runs/iris
"""
import sys

from tfp_bnn.cli import main

if __name__ == "__main__":
    sys.exit(main(["iris"] + sys.argv[1:]))
