#!/usr/bin/env bash
# Wheels that benchmarks/gpu_suite.py needs on a bare GPU machine whose Python 3.12 already
# holds torch, numpy, pandas, pyarrow, scipy, PyYAML and tqdm, but not raystudy's other
# dependencies. Run here (where pip reaches PyPI), in the repository root:
#     bash benchmarks/gpu_wheels.sh            # -> .whl/ (about 20 MB; add .whl to .git/info/exclude)
# then on the GPU machine, with .whl carried:
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#         --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# Left out on purpose: Ray (its wheel is ~75 MB, over a 64 MB transfer; without Ray the suite
# packs trials as plain processes and says so) and numpy 1.26 (escnn's lie_learn was built for
# numpy < 2; if it fails to import there, the GCNN rows are reported as not timed).
set -euo pipefail
dest=${1:-.whl}
py=${PYTHON:-python3}
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d "$dest" \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  pyhessian==0.1 torchattacks==3.5.1 escnn==1.0.11 lie_learn==0.0.2 pymanopt==2.2.1 autograd==1.9.1
du -sh "$dest"
