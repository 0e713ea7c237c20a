"""Write diabetes_types.csv: scikit-learn's bundled diabetes data as a three-class table.

The 442 real patients of Efron et al. (2004), "Least Angle Regression" (the raw, unscaled values
that ship with scikit-learn; nothing is downloaded). Six baseline features are kept; `Type` is the
tertile of the disease progression one year later (low / medium / high, cut at the 1/3 and 2/3
quantiles of all 442 rows). `Progression` is that score itself: a study must drop it, since the
class is computed from it. Run from the repository root: python examples/data/make_diabetes_types.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_diabetes

OUT = Path(__file__).with_name("diabetes_types.csv")
COLUMNS = {"age": "Age", "bmi": "BMI", "bp": "BP", "s3": "HDL", "s5": "LTG", "s6": "GLU"}


def main(out: Path = OUT) -> Path:
    frame = load_diabetes(scaled=False, as_frame=True).frame
    table = frame[list(COLUMNS)].rename(columns=COLUMNS)
    table["Progression"] = frame["target"]
    cuts = np.quantile(frame["target"], [1 / 3, 2 / 3])
    table["Type"] = np.array(["low", "medium", "high"])[np.searchsorted(cuts, frame["target"], side="right")]
    table.to_csv(out, index=False, float_format="%.10g")
    return out


if __name__ == "__main__":
    main()
