"""Reference classifiers on the exact splits of ``tfp-bnn iris``: how hard is each test set?

Iris has 30 test examples per split, so one example is 0.033 of accuracy; this script scores
scikit-learn's logistic regression, an RBF SVM and a deterministic 64-64 MLP on the splits the
Iris build uses for seeds 0..S-1 (data seed + i, the same scaling), to put the BNN's per-seed
accuracy beside the best a point-estimate classifier reaches on the same test examples.

    python scripts/iris_reference.py --seeds 5
"""
import argparse
import json

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC

from tfp_bnn import data, iris


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--data-seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = iris.IrisConfig(seeds=args.seeds, data_seed=args.data_seed)
    table = data.load_iris()
    models = {"logistic_regression": lambda: LogisticRegression(C=100, max_iter=5000),
              "svm_rbf": lambda: SVC(C=10),
              "mlp_64_64": lambda: MLPClassifier((64, 64), max_iter=3000, random_state=0)}
    scores = {name: [] for name in models}
    for seed in range(args.seeds):
        split = iris.prepare_data(config, seed, table)[1]
        for name, make in models.items():
            scores[name].append(float(make().fit(split.x_train, split.y_train)
                                      .score(split.x_test, split.y_test)))
    for name, s in scores.items():
        print(f"{name:20s} per seed {[round(v, 3) for v in s]}  mean {np.mean(s):.3f}")
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
