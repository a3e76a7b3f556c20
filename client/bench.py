"""perf_analyzer benchmark of the cascade vs fixed stages; see optistop/perf/bench.py for what it measures.

$ python client/bench.py                          # start a server on free ports, run, write bench/
$ python client/bench.py --url 127.0.0.1:8001     # against a running server (gRPC)
$ python client/bench.py --quick                  # smoke run: 1 repeat, concurrency 1, 4 and 8
"""

import sys

from optistop.perf.bench import main

if __name__ == "__main__":
    sys.exit(main())
