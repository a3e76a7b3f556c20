"""Export the chosen predictor to ONNX + sidecar (optistop.predictor.export), check parity, write the replay.

$ python predictor_export/export_onnx.py --help       # the step's command; the code lives in optistop.predictor.export
"""

from optistop.predictor.export import main

if __name__ == "__main__":
    raise SystemExit(main())
