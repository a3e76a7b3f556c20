"""Train the quality predictors (optistop.predictor.train): collected labels -> MLPs -> per-stage calibration.

$ python predictor_export/train.py --help       # the step's command; the code lives in optistop.predictor.train
"""

from optistop.predictor.train import main

if __name__ == "__main__":
    raise SystemExit(main())
