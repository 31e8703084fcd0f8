#!/bin/sh
# Run Triton's perf_analyzer from the venv `make perf-tools` made (PERF_TOOLS, default
# .perf-tools): the tritonclient 2.40.0 wheel ships bin/perf_analyzer, which loads the CUDA
# runtime library of nvidia-cuda-runtime-cu12 (never used on a CPU-only machine) and
# Debian's libb64. Arguments are perf_analyzer's, e.g.
#   benchmarks/perf_analyzer.sh -m MODEL -u 127.0.0.1:PORT -i http \
#       --concurrency-range 1:16 -H "Authorization: Bearer TOKEN"
set -eu
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${PERF_TOOLS:-$here/.perf-tools}
if [ ! -x "$venv/bin/perf_analyzer" ]; then
	echo "perf_analyzer not found in $venv: run 'make perf-tools' first" >&2
	exit 2
fi
cuda=$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cuda_runtime/lib 2>/dev/null | head -n 1)
LD_LIBRARY_PATH="${cuda}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$venv/bin/perf_analyzer" "$@"
