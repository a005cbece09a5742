# The first lines of every device script (sourced by common.sh and serve_common.sh): installs
# the carried wheels (.whl/, benchmarks/README.md) into /tmp/site -- not with SKIP_WHEELS=1,
# on a machine that has them -- puts headcast (a link tree), the repo and the Python client on
# PYTHONPATH, and records the GPU and the versions in $OUT/log.txt ($LOG).
: "${OUT:?OUT must be set (the device tool sets it)}"
if [[ -z ${SKIP_WHEELS:-} ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
# The device image does not install headcast: a link tree makes the folders importable as
# headcast.server, headcast.pipeline and headcast.streaming (pyproject.toml's package-dir).
mkdir -p /tmp/src/headcast
for package in server pipeline streaming; do
    ln -sfn "$PWD/$package" "/tmp/src/headcast/$package"
done
export PYTHONPATH=/tmp/site:/tmp/src:$PWD:$PWD/clients/python PYTHONUNBUFFERED=1
LOG=$OUT/log.txt
{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} 2>&1 | tee -a "$LOG"
